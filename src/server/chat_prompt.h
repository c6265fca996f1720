// From a chat request's `messages` to the prompt text: the model folder's chat template
// (tokenizer_config.json "chat_template", rendered by server/chat_template.h) when statelm can
// render it, else the plain template below, which the server announces at startup and
// /v1/models reports ("chat_template": "tokenizer_config.json" | "plain").
//
// The plain template, for models without a usable chat template:
//     {role}: {content}\n        for each message, in order
//     assistant:                 when a generation prompt is asked for (always, for a request)
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "server/chat_template.h"

namespace statelm::server {

class ChatPrompt {
 public:
  // Reads model_dir/tokenizer_config.json when there is one. A template the renderer cannot
  // handle is not an error: `fallback_reason()` says why the plain template is used instead.
  static ChatPrompt from_model_dir(const std::string& model_dir);
  // A given template source (tests); nullopt = the plain template.
  static ChatPrompt from_source(const std::optional<std::string>& source, std::string bos = {}, std::string eos = {});

  // "tokenizer_config.json" or "plain".
  const std::string& name() const { return name_; }
  // Why the plain template is in use ("" when the model's template is).
  const std::string& fallback_reason() const { return fallback_reason_; }

  // `messages` already checked and normalised by parse_messages(); ApiError 400 for what the
  // template raises.
  std::string render(const nlohmann::json& messages, bool add_generation_prompt = true) const;

 private:
  std::optional<ChatTemplate> template_;
  std::string bos_, eos_;
  std::string name_ = "plain", fallback_reason_ = "the model folder has no tokenizer_config.json";
};

// The request's "messages" checked (ApiError 400 naming "messages"): a non-empty list of
// objects with "role" one of system, user, assistant (also developer and tool, passed through)
// and "content" a string, null (assistant only), or a list of {"type": "text", "text": ...}
// parts, joined with "\n" as vLLM does. Returns the messages with content as plain strings;
// other keys (name, ...) are kept for templates that use them.
nlohmann::json parse_messages(const nlohmann::json& body);

}  // namespace statelm::server
