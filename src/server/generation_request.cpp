#include "server/generation_request.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "core/utf8.h"
#include "server/chat_prompt.h"
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
  if (v->is_number_float() && std::abs(v->get<double>()) < 9e18 && v->get<double>() == double(int64_t(v->get<double>())))
    return int64_t(v->get<double>());
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

json parse_body(std::string_view text) {
  if (!utf8_is_valid(text)) invalid_request("", "the request body is not valid UTF-8");
  json body = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) invalid_request("", "the request body is not valid JSON");
  if (!body.is_object()) invalid_request("", "the request body must be a JSON object");
  if (const json* m = field(body, "model"); m && !m->is_string())
    invalid_request("model", "model: expected a string, got ", m->type_name());
  return body;
}

int32_t token_id(const json& v, int64_t vocab) {
  if (!v.is_number_integer()) invalid_request("prompt", "prompt: ", v.dump(), " is not a token id");
  const int64_t id = v.is_number_unsigned() ? int64_t(std::min<uint64_t>(v.get<uint64_t>(), INT64_MAX)) : v.get<int64_t>();
  if (id < 0 || id >= vocab)
    invalid_request("prompt", "prompt: token id ", id, " is outside the vocabulary [0, ", vocab, ")");
  return int32_t(id);
}

std::vector<int32_t> encode_text(const std::string& text, const Tokenizer& tokenizer, const char* param,
                                 bool add_special_tokens) {
  // nlohmann rejects invalid UTF-8 while parsing; this is for escapes that decode to it.
  if (!utf8_is_valid(text)) invalid_request(param, param, ": not valid UTF-8");
  try {
    return tokenizer.encode(text, add_special_tokens);
  } catch (const Error& e) {
    invalid_request(param, param, ": ", e.what());
  }
}

// "prompt": a string, a list of token ids, or a one-element list of either (what the OpenAI
// SDK sends for a single prompt). Several prompts in one request are not supported.
std::vector<int32_t> parse_prompt(const json& body, const Tokenizer& tokenizer, int64_t vocab) {
  const json* p = field(body, "prompt");
  if (!p) invalid_request("prompt", "prompt: required");
  if (p->is_array() && p->size() == 1 && (p->at(0).is_string() || p->at(0).is_array())) p = &p->at(0);
  std::vector<int32_t> ids;
  if (p->is_string()) {
    ids = encode_text(p->get<std::string>(), tokenizer, "prompt", true);
  } else if (p->is_array()) {
    for (const json& e : *p) {
      if (e.is_string() || e.is_array())
        invalid_request("prompt", "prompt: a list of several prompts is not supported (send one request each, or use n)");
      ids.push_back(token_id(e, vocab));
    }
  } else {
    invalid_request("prompt", "prompt: expected a string or a list of token ids, got ", p->type_name());
  }
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

int32_t top_alternatives(int64_t k, const char* param) {
  if (k < 0 || k > 20) invalid_request(param, param, ": must be between 0 and 20, got ", k);
  return int32_t(k);
}

// Everything but the prompt and logprobs, which differ between the two endpoints.
// `max_tokens_key` is the field the max_tokens value came from (for messages).
GenerationRequest parse_common(const json& body, const ModelLimits& limits, std::optional<int64_t> max_tokens,
                               const char* max_tokens_key, int64_t default_max_tokens) {
  GenerationRequest r;
  const GenerationDefaults& d = limits.defaults;
  const int64_t n = integer(body, "n").value_or(1);
  if (n < 1 || n > limits.max_n) invalid_request("n", "n: must be between 1 and ", limits.max_n, ", got ", n);
  r.n = int32_t(n);
  if (auto b = integer(body, "best_of"); b && *b != n) invalid_request("best_of", "best_of: only best_of = n is supported");
  if (boolean(body, "echo").value_or(false)) invalid_request("echo", "echo: not supported");

  SamplingParams& s = r.sampling;
  if (max_tokens) {
    if (*max_tokens < 1) invalid_request(max_tokens_key, max_tokens_key, ": must be >= 1, got ", *max_tokens);
    if (limits.max_tokens > 0 && *max_tokens > limits.max_tokens)
      invalid_request(max_tokens_key, max_tokens_key, ": must be at most ", limits.max_tokens, " on this server, got ", *max_tokens);
    s.max_tokens = *max_tokens;
  } else {
    s.max_tokens = d.max_tokens.value_or(default_max_tokens);
    if (limits.max_tokens > 0) s.max_tokens = std::min(s.max_tokens, limits.max_tokens);
  }
  s.temperature = float(number(body, "temperature").value_or(d.temperature.value_or(1.0)));
  s.greedy = s.temperature == 0.0f;
  s.top_p = float(number(body, "top_p").value_or(d.top_p.value_or(1.0)));
  s.top_k = int32_t(std::clamp<int64_t>(integer(body, "top_k").value_or(d.top_k.value_or(0)), -1, INT32_MAX));
  if (s.top_k == -1) s.top_k = 0;  // vLLM's spelling of "off"
  s.min_p = float(number(body, "min_p").value_or(d.min_p.value_or(0.0)));
  s.repetition_penalty = float(number(body, "repetition_penalty").value_or(d.repetition_penalty.value_or(1.0)));
  if (const json* seed = field(body, "seed")) {
    if (!seed->is_number_integer()) invalid_request("seed", "seed: expected an integer, got ", seed->dump());
    s.seed = seed->is_number_unsigned() ? seed->get<uint64_t>() : uint64_t(seed->get<int64_t>());
  } else {
    // No seed: a different draw every request, as OpenAI's API behaves.
    static thread_local std::mt19937_64 seeds{std::random_device{}()};
    s.seed = seeds();
  }
  s.stop_strings = parse_stop(body);
  s.stop_token_ids = limits.stop_token_ids;
  r.stream = boolean(body, "stream").value_or(false);
  if (const json* so = field(body, "stream_options")) {
    if (!so->is_object()) invalid_request("stream_options", "stream_options: expected an object, got ", so->type_name());
    r.include_usage = boolean(*so, "include_usage").value_or(false);
  }
  return r;
}

// The prompt's limits, checked once the prompt and max_tokens are known.
void check_lengths(const GenerationRequest& r, const ModelLimits& limits, const char* prompt_param, const char* max_tokens_key) {
  if (r.prompt.empty()) invalid_request(prompt_param, prompt_param, ": empty (at least one token is needed)");
  const int64_t prompt = int64_t(r.prompt.size());
  if (limits.max_prompt_tokens > 0 && prompt > limits.max_prompt_tokens)
    throw ApiError(400, "invalid_request_error",
                   str_cat(prompt_param, ": ", prompt, " tokens; this server accepts at most ", limits.max_prompt_tokens),
                   prompt_param, "context_length_exceeded");
  if (prompt + r.sampling.max_tokens > limits.max_context)
    throw ApiError(400, "invalid_request_error",
                   str_cat("this model's context is ", limits.max_context, " tokens; the prompt has ", prompt, " and ",
                           max_tokens_key, " asks for ", r.sampling.max_tokens, " more"),
                   prompt >= limits.max_context ? prompt_param : max_tokens_key, "context_length_exceeded");
  try {
    r.sampling.validate();
  } catch (const Error& e) {
    throw api_error_from(e);
  }
}

}  // namespace

GenerationDefaults GenerationDefaults::from_model_dir(const std::string& model_dir) {
  GenerationDefaults d;
  const auto path = std::filesystem::path(model_dir) / "generation_config.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) return d;
  std::stringstream text;
  text << in.rdbuf();
  const json j = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) fail(ErrorKind::Format, path.string(), ": not a JSON object");
  auto num = [&](const char* k) { return j.contains(k) && j[k].is_number() ? std::optional<double>(j[k].get<double>()) : std::nullopt; };
  auto whole = [&](const char* k) {
    return j.contains(k) && j[k].is_number_integer() ? std::optional<int64_t>(j[k].get<int64_t>()) : std::nullopt;
  };
  d.temperature = num("temperature");
  d.top_p = num("top_p");
  d.min_p = num("min_p");
  d.repetition_penalty = num("repetition_penalty");
  d.top_k = whole("top_k");
  d.max_tokens = whole("max_new_tokens");
  if (d.max_tokens && *d.max_tokens < 1) d.max_tokens.reset();
  return d;
}

GenerationRequest parse_completion_request(std::string_view text, const Tokenizer& tokenizer, const ModelLimits& limits) {
  const json body = parse_body(text);
  GenerationRequest r = parse_common(body, limits, integer(body, "max_tokens"), "max_tokens", 16);
  if (auto lp = integer(body, "logprobs")) r.sampling.logprobs = top_alternatives(*lp, "logprobs");
  r.prompt = parse_prompt(body, tokenizer, limits.vocab_size);
  check_lengths(r, limits, "prompt", "max_tokens");
  return r;
}

GenerationRequest parse_chat_request(std::string_view text, const Tokenizer& tokenizer, const ModelLimits& limits,
                                     const ChatPrompt& chat_prompt) {
  const json body = parse_body(text);
  const json messages = parse_messages(body);
  const char* max_key = field(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  // Chat's default: the rest of the context (vLLM's), unless generation_config.json says.
  const std::string prompt_text = chat_prompt.render(messages, /*add_generation_prompt=*/true);
  // The template writes the special tokens (BOS and the like) itself: no tokenizer additions,
  // as transformers' apply_chat_template and vLLM tokenize it.
  std::vector<int32_t> prompt = encode_text(prompt_text, tokenizer, "messages", /*add_special_tokens=*/false);
  GenerationRequest r = parse_common(body, limits, integer(body, max_key), max_key,
                                     std::max<int64_t>(1, limits.max_context - int64_t(prompt.size())));
  r.chat = true;
  r.prompt = std::move(prompt);
  if (boolean(body, "logprobs").value_or(false)) {
    r.sampling.logprobs = top_alternatives(integer(body, "top_logprobs").value_or(0), "top_logprobs");
  } else if (integer(body, "top_logprobs")) {
    invalid_request("top_logprobs", "top_logprobs: needs \"logprobs\": true");
  }
  check_lengths(r, limits, "messages", max_key);
  return r;
}

}  // namespace statelm::server
