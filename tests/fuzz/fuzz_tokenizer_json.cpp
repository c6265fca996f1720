// libFuzzer target: arbitrary bytes as a tokenizer.json. Loading must give a Tokenizer or a
// statelm::Error (Format / Unsupported), never a crash; a loaded tokenizer must then encode and
// decode a few texts without crashing (errors allowed: e.g. a regex hitting its match limit).
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string json(reinterpret_cast<const char*>(data), size);
  try {
    statelm::Tokenizer tok = statelm::Tokenizer::from_json(json, "fuzz/tokenizer.json");
    for (const char* text : {"", " ", "Hello world, it's 2024!\n\n  \xE4\xB8\xAD\xE6\x96\x87 <s></s><|endoftext|>",
                             "a  b   c    \xF0\x9F\x98\x80 \xCC\x81" "e\xCC\x81"}) {
      try {
        std::vector<int32_t> ids = tok.encode(text);
        (void)tok.decode(ids, false);
        (void)tok.decode(ids, true);
        statelm::IncrementalDetokenizer detok(tok, false);
        for (int32_t id : ids) (void)detok.push(id);
        (void)detok.flush();
      } catch (const statelm::Error&) {
      }
    }
    std::vector<int32_t> low;
    for (int32_t i = 0; i < 16 && size_t(i) < tok.vocab_size(); ++i) low.push_back(i);
    try {
      (void)tok.decode(low, false);
    } catch (const statelm::Error&) {
    }
    (void)tok.bos_id();
    (void)tok.eos_id();
  } catch (const statelm::Error&) {
  }
  return 0;
}
