// Chat templates: the Jinja subset that Hugging Face `tokenizer_config.json` chat templates use,
// rendered the way transformers renders them (jinja2 with trim_blocks and lstrip_blocks), so a
// conversation becomes byte-for-byte the prompt the model was trained on.
//
// Supported: text; {{ expr }}; {# comments #}; {% if / elif / else / endif %}; {% for x in expr
// %} ... {% endfor %} with loop.index, index0, first, last, length, revindex, revindex0; {% set
// name = expr %}; {%- -%} / {{- -}} whitespace control and {%+ +%}; literals ('s', "s", 1, 1.5,
// true/false/none in either case, [lists]); names, .attr, ['key'], [i], [a:b] slices; ==, !=, <,
// >, <=, >=, in, not in, and, or, not, +, -, *, /, %, ~, ( ), `a if c else b`; tests `is [not]
// defined | none | string | number | mapping | iterable`; filters upper, lower, trim, length,
// count; methods strip, lstrip, rstrip, upper, lower, startswith, endswith, get; and the
// variables messages, add_generation_prompt, bos_token, eos_token, raise_exception(msg).
//
// Anything else (macros, namespace(), tojson, tuple unpacking, ...) fails at parse time, so the
// server knows at startup that it must fall back (server/chat_prompt.h).
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace statelm::server {

namespace tmpl {
struct Node;
}

struct ChatTemplateVars {
  nlohmann::json messages = nlohmann::json::array();  // [{"role": ..., "content": "..."}, ...]
  bool add_generation_prompt = true;
  std::string bos_token, eos_token;
};

class ChatTemplate {
 public:
  // Error(Unsupported) naming the construct and its offset when `source` uses Jinja beyond the
  // subset above; Error(Format) when it is not well-formed (an unclosed tag, a stray endif).
  static ChatTemplate parse(std::string_view source);

  // Error(InvalidArgument) for what the template raises (raise_exception) or a type error while
  // rendering (e.g. '+' on a string and a number): the request's fault, as in transformers.
  std::string render(const ChatTemplateVars& vars) const;

 private:
  std::shared_ptr<const tmpl::Node> root_;
};

}  // namespace statelm::server
