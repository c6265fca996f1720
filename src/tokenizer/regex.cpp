// PCRE2 wrapper: compile once (JIT when available), match many times from any thread.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/regex.h"

#include <pcre2.h>

#include <memory>

#include "core/error.h"
#include "core/utf8.h"
#include "tokenizer/json_field.h"

namespace statelm::tok {

namespace {

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  int n = pcre2_get_error_message(code, buf, sizeof(buf));
  return n < 0 ? "error " + std::to_string(code) : std::string(reinterpret_cast<char*>(buf), size_t(n));
}

struct MatchDataDeleter {
  void operator()(pcre2_match_data* m) const { pcre2_match_data_free(m); }
};

}  // namespace

Regex::Regex(std::string_view pattern, bool literal, const std::string& source, const std::string& field)
    : field_(field) {
  uint32_t options = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);  // LITERAL excludes UCP
  int err = 0;
  PCRE2_SIZE offset = 0;
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options, &err,
                        &offset, nullptr);
  if (!code_) fail(ErrorKind::Format, source, ": ", field, ": bad regex at offset ", offset, ": ", pcre2_message(err));
  // JIT is an optimisation only: without it (unsupported CPU, no memory) matching still works.
  pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);
}

Regex::~Regex() { pcre2_code_free(code_); }

void Regex::find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const {
  // Checking UTF-8 once here lets every match below skip PCRE2's own (whole-subject) check,
  // which would make iterating over a long string quadratic.
  STATELM_CHECK(utf8_is_valid(s), "regex subject is not valid UTF-8");
  std::unique_ptr<pcre2_match_data, MatchDataDeleter> md(pcre2_match_data_create_from_pattern(code_, nullptr));
  if (!md) fail(ErrorKind::OutOfMemory, "regex match data");
  auto subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t pos = 0;
  bool have_last = false;
  size_t last_end = 0;
  while (pos <= s.size()) {
    int rc = pcre2_match(code_, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, md.get(), nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)  // deep backtracking: the interpreter uses the heap
      rc = pcre2_match(code_, subject, s.size(), pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md.get(), nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) fail(ErrorKind::InvalidArgument, "regex ", field_, " failed on the input: ", pcre2_message(rc));
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
    size_t begin = ov[0], end = ov[1];
    if (end < begin) end = begin;  // \K can report such matches; treat them as empty
    if (begin == end && have_last && last_end == end) {
      // Empty match where the previous one ended: step over one character and search again.
      if (pos >= s.size()) break;
      size_t n = utf8_sequence_length(s.substr(pos));
      pos += n ? n : 1;
      continue;
    }
    out.emplace_back(begin, end);
    have_last = true;
    last_end = end;
    pos = end;
  }
}

std::unique_ptr<Regex> parse_pattern(const JsonField& pattern) {
  JsonField s = pattern.opt("String"), r = pattern.opt("Regex");
  if (!s.is_null()) return std::make_unique<Regex>(s.str(), true, pattern.source(), s.path());
  if (!r.is_null()) return std::make_unique<Regex>(r.str(), false, pattern.source(), r.path());
  pattern.fail(ErrorKind::Format, "must be {\"String\": ...} or {\"Regex\": ...}");
}

}  // namespace statelm::tok
