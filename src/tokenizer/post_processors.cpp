// The post-processors of tokenizer.json; only the single-sequence case matters for ids.
#include "tokenizer/post_processors.h"

#include <map>
#include <string>

namespace statelm::tok {

namespace {

constexpr int kMaxDepth = 16;

// Wraps the sequence in fixed id lists: TemplateProcessing's "single", Bert's [CLS] A [SEP],
// Roberta's <s> A </s> are all this.
class Wrap : public PostProcessor {
 public:
  Wrap(std::vector<int32_t> before, std::vector<int32_t> after) : before_(std::move(before)), after_(std::move(after)) {}
  void process(std::vector<int32_t>& ids, bool add_special_tokens) const override {
    if (!add_special_tokens) return;
    ids.insert(ids.begin(), before_.begin(), before_.end());
    ids.insert(ids.end(), after_.begin(), after_.end());
  }
  void special_ids(std::vector<int32_t>& before, std::vector<int32_t>& after) const override {
    before.insert(before.end(), before_.begin(), before_.end());
    after.insert(after.end(), after_.begin(), after_.end());
  }

 private:
  std::vector<int32_t> before_, after_;
};

class SequenceProcessor : public PostProcessor {
 public:
  explicit SequenceProcessor(std::vector<std::unique_ptr<PostProcessor>> parts) : parts_(std::move(parts)) {}
  void process(std::vector<int32_t>& ids, bool add_special_tokens) const override {
    for (const auto& p : parts_) p->process(ids, add_special_tokens);
  }
  void special_ids(std::vector<int32_t>& before, std::vector<int32_t>& after) const override {
    for (const auto& p : parts_) p->special_ids(before, after);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> parts_;
};

std::unique_ptr<PostProcessor> parse_template(const JsonField& f) {
  // special_tokens: {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}, ...}
  std::map<std::string, std::vector<int32_t>> specials;
  JsonField table = f.at("special_tokens");
  for (const auto& [name, value] : table.object()) {
    JsonField entry(value, table.path() + "[" + quote(name) + "]", f.source());
    JsonField ids = entry.at("ids");
    std::vector<int32_t> list;
    for (size_t i = 0; i < ids.array().size(); ++i) list.push_back(int32_t(ids.at(i).integer(0, (int64_t(1) << 24) - 1)));
    specials[name] = std::move(list);
  }
  // single: [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]
  JsonField single = f.at("single");
  std::vector<int32_t> before, after;
  bool seen_sequence = false;
  for (size_t i = 0; i < single.array().size(); ++i) {
    JsonField piece = single.at(i);
    JsonField seq = piece.opt("Sequence"), special = piece.opt("SpecialToken");
    if (!seq.is_null()) {
      std::string id = seq.at("id").str();
      if (id != "A") seq.at("id").fail(ErrorKind::Format, "must be \"A\" in the single template, not ", quote(id));
      if (seen_sequence) piece.fail(ErrorKind::Unsupported, "repeats the sequence, which statelm does not support");
      seen_sequence = true;
    } else if (!special.is_null()) {
      JsonField id = special.at("id");
      auto it = specials.find(id.str());
      if (it == specials.end()) id.fail(ErrorKind::Format, quote(id.str()), " is not in ", table.path());
      auto& target = seen_sequence ? after : before;
      target.insert(target.end(), it->second.begin(), it->second.end());
    } else {
      piece.fail(ErrorKind::Format, "must be {\"Sequence\": ...} or {\"SpecialToken\": ...}");
    }
  }
  if (!seen_sequence) single.fail(ErrorKind::Format, "has no {\"Sequence\": {\"id\": \"A\"}} piece");
  return std::make_unique<Wrap>(std::move(before), std::move(after));
}

// ["[SEP]", 102] -> 102
int32_t token_pair_id(const JsonField& f) {
  if (!f.json().is_array() || f.array().size() != 2) f.fail(ErrorKind::Format, "must be [token, id]");
  f.at(size_t(0)).str();
  return int32_t(f.at(size_t(1)).integer(0, (int64_t(1) << 24) - 1));
}

}  // namespace

std::unique_ptr<PostProcessor> parse_post_processor(const JsonField& f, int depth) {
  if (f.is_null()) return nullptr;
  if (depth > kMaxDepth) f.fail(ErrorKind::Format, "nests Sequences deeper than ", kMaxDepth);
  std::string type = f.type();
  if (type == "ByteLevel") return std::make_unique<Wrap>(std::vector<int32_t>{}, std::vector<int32_t>{});
  if (type == "TemplateProcessing") return parse_template(f);
  if (type == "BertProcessing" || type == "RobertaProcessing")
    return std::make_unique<Wrap>(std::vector<int32_t>{token_pair_id(f.at("cls"))},
                                  std::vector<int32_t>{token_pair_id(f.at("sep"))});
  if (type == "Sequence") {
    JsonField list = f.at("processors");
    std::vector<std::unique_ptr<PostProcessor>> parts;
    for (size_t i = 0; i < list.array().size(); ++i) {
      auto p = parse_post_processor(list.at(i), depth + 1);
      if (!p) list.at(i).fail(ErrorKind::Format, "must be a post-processor, not null");
      parts.push_back(std::move(p));
    }
    return std::make_unique<SequenceProcessor>(std::move(parts));
  }
  f.unsupported_type();
}

}  // namespace statelm::tok
