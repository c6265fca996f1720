#include "server/completions.h"

#include <algorithm>

#include "core/utf8.h"
#include "server/openai_errors.h"

namespace statelm::server {

using nlohmann::json;

namespace {

// Field readers: absent or null means "use the default"; a value of the wrong type is a 400
// naming the field, as OpenAI does, rather than a silent default.
const json* field(const json& body, const char* key) {
  auto it = body.find(key);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

std::optional<double> number(const json& body, const char* key) {
  const json* v = field(body, key);
  if (!v) return std::nullopt;
  if (!v->is_number()) invalid_request(key, key, ": expected a number, got ", v->type_name());
  return v->get<double>();
}

std::optional<int64_t> integer(const json& body, const char* key) {
  const json* v = field(body, key);
  if (!v) return std::nullopt;
  // 3.0 is accepted as 3 (JavaScript clients cannot tell them apart); 3.5 is not.
  if (v->is_number_float() && v->get<double>() == double(int64_t(v->get<double>()))) return int64_t(v->get<double>());
  if (!v->is_number_integer()) invalid_request(key, key, ": expected an integer, got ", v->dump());
  if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT64_MAX)) invalid_request(key, key, ": too large");
  return v->get<int64_t>();
}

std::optional<bool> boolean(const json& body, const char* key) {
  const json* v = field(body, key);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) invalid_request(key, key, ": expected true or false, got ", v->type_name());
  return v->get<bool>();
}

int32_t token_id(const json& v, int64_t vocab) {
  if (!v.is_number_integer()) invalid_request("prompt", "prompt: ", v.dump(), " is not a token id");
  const int64_t id = v.is_number_unsigned() ? int64_t(std::min<uint64_t>(v.get<uint64_t>(), INT64_MAX)) : v.get<int64_t>();
  if (id < 0 || id >= vocab)
    invalid_request("prompt", "prompt: token id ", id, " is outside the vocabulary [0, ", vocab, ")");
  return int32_t(id);
}

std::vector<int32_t> encode_text(const std::string& text, const Tokenizer& tokenizer) {
  // nlohmann rejects invalid UTF-8 while parsing; this is for escapes that decode to it.
  if (!utf8_is_valid(text)) invalid_request("prompt", "prompt: not valid UTF-8");
  try {
    return tokenizer.encode(text);
  } catch (const Error& e) {
    invalid_request("prompt", "prompt: ", e.what());
  }
}

// "prompt": a string, a list of token ids, or a one-element list of either (what the OpenAI
// SDK sends for a single prompt). Several prompts in one request are not supported yet.
std::vector<int32_t> parse_prompt(const json& body, const Tokenizer& tokenizer, int64_t vocab) {
  const json* p = field(body, "prompt");
  if (!p) invalid_request("prompt", "prompt: required");
  if (p->is_array() && p->size() == 1 && (p->at(0).is_string() || p->at(0).is_array())) p = &p->at(0);
  std::vector<int32_t> ids;
  if (p->is_string()) {
    ids = encode_text(p->get<std::string>(), tokenizer);
  } else if (p->is_array()) {
    for (const json& e : *p) {
      if (e.is_string() || e.is_array())
        invalid_request("prompt", "prompt: a list of several prompts is not supported yet (send one request each)");
      ids.push_back(token_id(e, vocab));
    }
  } else {
    invalid_request("prompt", "prompt: expected a string or a list of token ids, got ", p->type_name());
  }
  if (ids.empty()) invalid_request("prompt", "prompt: empty (at least one token is needed)");
  return ids;
}

std::vector<std::string> parse_stop(const json& body) {
  const json* s = field(body, "stop");
  if (!s) return {};
  std::vector<std::string> stops;
  if (s->is_string()) {
    stops.push_back(s->get<std::string>());
  } else if (s->is_array()) {
    for (const json& e : *s) {
      if (!e.is_string()) invalid_request("stop", "stop: expected strings, got ", e.type_name());
      stops.push_back(e.get<std::string>());
    }
  } else {
    invalid_request("stop", "stop: expected a string or a list of strings, got ", s->type_name());
  }
  for (const auto& t : stops)
    if (t.empty()) invalid_request("stop", "stop: stop strings must not be empty");
  return stops;
}

}  // namespace

CompletionRequest parse_completion_request(std::string_view text, const Tokenizer& tokenizer, const ModelLimits& limits) {
  if (!utf8_is_valid(text)) invalid_request("", "the request body is not valid UTF-8");
  json body = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) invalid_request("", "the request body is not valid JSON");
  if (!body.is_object()) invalid_request("", "the request body must be a JSON object");
  if (const json* m = field(body, "model"); m && !m->is_string())
    invalid_request("model", "model: expected a string, got ", m->type_name());
  if (auto n = integer(body, "n"); n && *n != 1) invalid_request("n", "n: only n = 1 is supported for now");
  if (auto b = integer(body, "best_of"); b && *b != 1) invalid_request("best_of", "best_of: only 1 is supported for now");
  if (field(body, "logprobs")) invalid_request("logprobs", "logprobs: not supported yet");
  if (boolean(body, "echo").value_or(false)) invalid_request("echo", "echo: not supported yet");

  CompletionRequest r;
  r.prompt = parse_prompt(body, tokenizer, limits.vocab_size);
  SamplingParams& s = r.sampling;
  s.max_tokens = integer(body, "max_tokens").value_or(16);
  if (s.max_tokens < 1) invalid_request("max_tokens", "max_tokens: must be >= 1");
  s.temperature = float(number(body, "temperature").value_or(1.0));
  s.greedy = s.temperature == 0.0f;
  s.top_p = float(number(body, "top_p").value_or(1.0));
  s.top_k = int32_t(std::clamp<int64_t>(integer(body, "top_k").value_or(0), -1, INT32_MAX));
  if (s.top_k == -1) s.top_k = 0;  // vLLM's spelling of "off"
  s.min_p = float(number(body, "min_p").value_or(0.0));
  s.repetition_penalty = float(number(body, "repetition_penalty").value_or(1.0));
  if (const json* seed = field(body, "seed")) {
    if (!seed->is_number_integer()) invalid_request("seed", "seed: expected an integer, got ", seed->dump());
    s.seed = seed->is_number_unsigned() ? seed->get<uint64_t>() : uint64_t(seed->get<int64_t>());
  }
  s.stop_strings = parse_stop(body);
  s.stop_token_ids = limits.stop_token_ids;
  r.stream = boolean(body, "stream").value_or(false);
  try {
    s.validate();
  } catch (const Error& e) {
    throw api_error_from(e);
  }
  const int64_t worst = int64_t(r.prompt.size()) + s.max_tokens;
  if (worst > limits.max_context)
    throw ApiError(400, "invalid_request_error",
                   str_cat("this model's context is ", limits.max_context, " tokens; the prompt has ", r.prompt.size(),
                           " and max_tokens asks for ", s.max_tokens, " more"),
                   "max_tokens", "context_length_exceeded");
  return r;
}

CompletionText::CompletionText(const Tokenizer& tokenizer, const std::vector<int32_t>& stop_token_ids,
                               std::vector<std::string> stop_strings)
    : detok_(tokenizer), stops_(std::move(stop_strings)), stop_ids_(stop_token_ids) {}

std::string CompletionText::on_token(int32_t id) {
  if (finished_ || stops_.stopped()) return {};
  if (std::find(stop_ids_.begin(), stop_ids_.end(), id) != stop_ids_.end()) return {};
  return stops_.push(detok_.push(id));
}

std::string CompletionText::finish() {
  if (finished_ || stops_.stopped()) return {};
  finished_ = true;
  std::string out = stops_.push(detok_.flush());
  if (!stops_.stopped()) out += stops_.flush();
  return out;
}

namespace {
// The text_completion envelope shared by whole responses and stream chunks.
json completion_object(const CompletionMeta& meta, const std::string& text, json finish_reason) {
  return json{{"id", meta.id},
              {"object", "text_completion"},
              {"created", meta.created},
              {"model", meta.model},
              {"choices", json::array({json{{"index", 0},
                                             {"text", text},
                                             {"logprobs", nullptr},
                                             {"finish_reason", std::move(finish_reason)}}})}};
}
}  // namespace

json completion_response(const CompletionMeta& meta, const std::string& text, const std::string& finish_reason,
                         int64_t prompt_tokens, int64_t completion_tokens) {
  json r = completion_object(meta, text, finish_reason);
  r["usage"] = {{"prompt_tokens", prompt_tokens},
                {"completion_tokens", completion_tokens},
                {"total_tokens", prompt_tokens + completion_tokens}};
  return r;
}

std::string completion_chunk_event(const CompletionMeta& meta, const std::string& text, const std::string& finish_reason) {
  json chunk = completion_object(meta, text, finish_reason.empty() ? json(nullptr) : json(finish_reason));
  // Text from the detokenizer is whole UTF-8 characters; replace guards against the rest.
  return "data: " + chunk.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

}  // namespace statelm::server
