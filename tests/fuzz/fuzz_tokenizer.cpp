// libFuzzer target: arbitrary bytes through the GPT-NeoX tokenizer (or STATELM_FUZZ_TOKENIZER).
// The bytes are encoded as text (invalid UTF-8 must be a statelm::Error), and read again as a
// list of ids to decode, in one go and streamed: the streamed chunks must be whole UTF-8 and
// add up to decode()'s text. Anything else — a crash, UB, a mismatch — is a bug.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/utf8.h"
#include "tokenizer/tokenizer.h"

namespace {

const statelm::Tokenizer& tokenizer() {
  static const statelm::Tokenizer tok = [] {
    const char* env = std::getenv("STATELM_FUZZ_TOKENIZER");
    std::string path = env ? env : STATELM_SOURCE_DIR "/tests/fixtures/tokenizer/gpt-neox-20b.tokenizer.json";
    return statelm::Tokenizer::from_file(path);
  }();
  return tok;
}

void check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const statelm::Tokenizer& tok = tokenizer();
  std::string text(reinterpret_cast<const char*>(data), size);

  // 1. The bytes as text.
  try {
    std::vector<int32_t> ids = tok.encode(text, size % 2 == 0);
    check(statelm::utf8_is_valid(text));
    for (int32_t id : ids) check(id >= 0 && size_t(id) < tok.vocab_size());
    (void)tok.decode(ids, false);
  } catch (const statelm::Error& e) {
    check(e.kind() == statelm::ErrorKind::InvalidArgument && !statelm::utf8_is_valid(text));
  }

  // 2. The bytes as ids (2 bytes each, so that low ids — bytes, specials — come up often).
  std::vector<int32_t> ids;
  for (size_t i = 0; i + 1 < size; i += 2) {
    uint16_t v;
    std::memcpy(&v, data + i, 2);
    ids.push_back(int32_t(v % (tok.vocab_size() + 8)));  // a few out of range
  }
  bool skip = size % 3 == 0;
  std::string whole;
  try {
    whole = tok.decode(ids, skip);
  } catch (const statelm::Error& e) {
    check(e.kind() == statelm::ErrorKind::InvalidArgument);
    return 0;
  }
  check(statelm::utf8_is_valid(whole));
  statelm::IncrementalDetokenizer detok(tok, skip);
  std::string streamed;
  for (int32_t id : ids) {
    std::string chunk = detok.push(id);
    check(statelm::utf8_is_valid(chunk));
    streamed += chunk;
  }
  streamed += detok.flush();
  check(streamed == whole);
  return 0;
}
