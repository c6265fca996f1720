#include "server/chat_prompt.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/utf8.h"
#include "server/openai_errors.h"

namespace statelm::server {

using nlohmann::json;

namespace {

// bos_token / eos_token in tokenizer_config.json: a string, or an AddedToken object
// {"content": "...", ...}, or null.
std::string special_token(const json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end()) return {};
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) return (*it)["content"].get<std::string>();
  return {};
}

}  // namespace

ChatPrompt ChatPrompt::from_source(const std::optional<std::string>& source, std::string bos, std::string eos) {
  ChatPrompt p;
  p.bos_ = std::move(bos);
  p.eos_ = std::move(eos);
  if (!source) {
    p.fallback_reason_ = "no chat_template was given";
    return p;
  }
  try {
    p.template_ = ChatTemplate::parse(*source);
    p.name_ = "tokenizer_config.json";
    p.fallback_reason_.clear();
  } catch (const Error& e) {
    p.fallback_reason_ = e.what();
  }
  return p;
}

ChatPrompt ChatPrompt::from_model_dir(const std::string& model_dir) {
  const std::filesystem::path path = std::filesystem::path(model_dir) / "tokenizer_config.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) return ChatPrompt{};
  std::stringstream text;
  text << in.rdbuf();
  const json config = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (!config.is_object()) fail(ErrorKind::Format, path.string(), ": not a JSON object");
  std::optional<std::string> source;
  auto t = config.find("chat_template");
  if (t != config.end() && t->is_string()) {
    source = t->get<std::string>();
  } else if (t != config.end() && !t->is_null()) {
    // A list of named templates (tool use, RAG, ...): the one named "default" is the chat one.
    if (t->is_array())
      for (const json& named : *t)
        if (named.is_object() && named.value("name", "") == "default" && named.contains("template") && named["template"].is_string())
          source = named["template"].get<std::string>();
  }
  ChatPrompt p = from_source(source, special_token(config, "bos_token"), special_token(config, "eos_token"));
  if (!source) p.fallback_reason_ = "tokenizer_config.json has no chat_template";
  return p;
}

std::string ChatPrompt::render(const json& messages, bool add_generation_prompt) const {
  if (template_) {
    ChatTemplateVars vars;
    vars.messages = messages;
    vars.add_generation_prompt = add_generation_prompt;
    vars.bos_token = bos_;
    vars.eos_token = eos_;
    try {
      return template_->render(vars);
    } catch (const Error& e) {
      throw ApiError(400, "invalid_request_error", e.what(), "messages");
    }
  }
  std::string out;
  for (const json& m : messages) out += m["role"].get<std::string>() + ": " + m["content"].get<std::string>() + "\n";
  if (add_generation_prompt) out += "assistant:";
  return out;
}

json parse_messages(const json& body) {
  auto it = body.find("messages");
  if (it == body.end() || it->is_null()) invalid_request("messages", "messages: required");
  if (!it->is_array()) invalid_request("messages", "messages: expected a list of messages, got ", it->type_name());
  if (it->empty()) invalid_request("messages", "messages: at least one message is needed");
  json out = json::array();
  for (size_t i = 0; i < it->size(); ++i) {
    const json& m = (*it)[i];
    const std::string at = str_cat("messages[", i, "]");
    if (!m.is_object()) invalid_request("messages", at, ": expected an object, got ", m.type_name());
    const json* role = m.contains("role") ? &m["role"] : nullptr;
    if (!role || !role->is_string()) invalid_request("messages", at, ".role: required, a string");
    const std::string r = role->get<std::string>();
    if (r != "system" && r != "user" && r != "assistant" && r != "developer" && r != "tool")
      invalid_request("messages", at, ".role: \"", r, "\" is not system, user or assistant");
    json msg = m;
    const json content = m.contains("content") ? m["content"] : json();
    std::string text;
    if (content.is_string()) {
      text = content.get<std::string>();
    } else if (content.is_array()) {
      for (size_t j = 0; j < content.size(); ++j) {
        const json& part = content[j];
        if (!part.is_object() || !part.contains("type") || !part["type"].is_string())
          invalid_request("messages", at, ".content[", j, "]: expected {\"type\": \"text\", \"text\": ...}");
        if (part["type"] != "text")
          invalid_request("messages", at, ".content[", j, "]: content of type \"", part["type"].get<std::string>(),
                          "\" is not supported (text only)");
        if (!part.contains("text") || !part["text"].is_string())
          invalid_request("messages", at, ".content[", j, "].text: required, a string");
        text += (j ? "\n" : "") + part["text"].get<std::string>();
      }
    } else if (!(content.is_null() && r == "assistant")) {
      invalid_request("messages", at, ".content: expected a string or a list of text parts, got ", content.type_name());
    }
    if (!utf8_is_valid(text)) invalid_request("messages", at, ".content: not valid UTF-8");
    msg["content"] = std::move(text);
    out.push_back(std::move(msg));
  }
  return out;
}

}  // namespace statelm::server
