// Post-processors (tokenizer.json "post_processor"): add special tokens around an encoded
// sequence when add_special_tokens is set, e.g. Llama's <s>. Only ids matter here (offsets,
// type ids and pairs are not part of statelm's API). Supported: TemplateProcessing (the
// "single" template), ByteLevel (nothing to do for ids), BertProcessing, RobertaProcessing,
// Sequence.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "tokenizer/json_field.h"

namespace statelm::tok {

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  virtual void process(std::vector<int32_t>& ids, bool add_special_tokens) const = 0;
  // Ids this processor puts before / after the sequence (for bos_id / eos_id).
  virtual void special_ids(std::vector<int32_t>& before, std::vector<int32_t>& after) const = 0;
};

std::unique_ptr<PostProcessor> parse_post_processor(const JsonField& field, int depth = 0);

}  // namespace statelm::tok
