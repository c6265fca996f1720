// Stop strings over streamed text: a stop string may be split across tokens, so text that could
// still become the start of one is held back until it cannot. Once a stop string appears, the
// text before it is released and generation ends (the stop string itself is not emitted).
#pragma once

#include <string>
#include <vector>

namespace statelm {

class StopStringMatcher {
 public:
  explicit StopStringMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}

  // Adds decoded text; returns what is safe to emit now.
  std::string push(const std::string& text);
  // End of generation: whatever was held back (if no stop string matched).
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

}  // namespace statelm
