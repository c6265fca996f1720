// The chat template renderer (server/chat_template.h) and the prompt built from it
// (server/chat_prompt.h): byte-identical to transformers on the demo model's reference
// rendering, and on real-world template styles (ChatML, Llama-2 with its alternation check,
// whitespace control) with expected strings written by hand from jinja2's rules.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "server/chat_prompt.h"
#include "server/chat_template.h"
#include "server/openai_errors.h"
#include "unit/test_support.h"

namespace statelm {
namespace {

using nlohmann::json;
using server::ChatPrompt;
using server::ChatTemplate;
using server::ChatTemplateVars;

std::string render(const std::string& source, const json& messages, bool add_generation_prompt = true,
                   const std::string& bos = "<s>", const std::string& eos = "</s>") {
  ChatTemplateVars v;
  v.messages = messages;
  v.add_generation_prompt = add_generation_prompt;
  v.bos_token = bos;
  v.eos_token = eos;
  return ChatTemplate::parse(source).render(v);
}

json conversation() {
  return json::array({{{"role", "system"}, {"content", "Be brief."}},
                      {{"role", "user"}, {"content", "Hi"}},
                      {{"role", "assistant"}, {"content", "Hello."}},
                      {{"role", "user"}, {"content", "Bye"}}});
}

TEST(ChatTemplate, DemoModelMatchesTransformers) {
  const auto dir = test::source_dir() / "models" / "shakespeare-mamba2";
  std::ifstream in(dir / "reference.json");
  ASSERT_TRUE(in);
  std::stringstream s;
  s << in.rdbuf();
  const json chat = json::parse(s.str())["chat"];
  ChatPrompt p = ChatPrompt::from_model_dir(dir.string());
  EXPECT_EQ(p.name(), "tokenizer_config.json");
  EXPECT_EQ(p.fallback_reason(), "");
  EXPECT_EQ(p.render(server::parse_messages(json{{"messages", chat["messages"]}})), chat["rendered"].get<std::string>());
}

TEST(ChatTemplate, ChatMl) {
  const std::string t =
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
      "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
  EXPECT_EQ(render(t, conversation()),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
            "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(render(t, json::array({{{"role", "user"}, {"content", "x"}}}), false), "<|im_start|>user\nx<|im_end|>\n");
}

// Llama-2's template as Meta shipped it in tokenizer_config.json: set, slices, loop.index0, %,
// .strip(), raise_exception on roles that do not alternate.
const char* kLlama2 =
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

TEST(ChatTemplate, Llama2) {
  EXPECT_EQ(render(kLlama2, conversation()),
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello. </s><s>[INST] Bye [/INST]");
  EXPECT_EQ(render(kLlama2, json::array({{{"role", "user"}, {"content", "  padded  "}}})), "<s>[INST] padded [/INST]");
  const json bad = json::array({{{"role", "user"}, {"content", "a"}}, {{"role", "user"}, {"content", "b"}}});
  try {
    render(kLlama2, bad);
    FAIL() << "no error for two user turns in a row";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("Conversation roles must alternate"), std::string::npos) << e.what();
  }
  // Through ChatPrompt the same error is a 400 naming messages.
  ChatPrompt p = ChatPrompt::from_source(std::string(kLlama2), "<s>", "</s>");
  try {
    p.render(bad);
    FAIL();
  } catch (const server::ApiError& e) {
    EXPECT_EQ(e.status(), 400);
    EXPECT_EQ(e.param(), "messages");
  }
}

// jinja2 as transformers configures it: trim_blocks (the newline after a block tag goes),
// lstrip_blocks (blanks before a block tag on its own line go), and - / + overrides.
TEST(ChatTemplate, WhitespaceControl) {
  const std::string t =
      "{%- for m in messages %}\n"
      "    {%- if loop.first %}[first]{% endif %}\n"
      "  {% if m.role == 'user' %}\n"
      "U: {{ m.content | trim }}\n"
      "  {% else %}\n"
      "A: {{ m.content | upper }}\n"
      "  {% endif %}\n"
      "{% endfor -%}\n"
      "   {{- ' END' if add_generation_prompt else ' NOEND' }}";
  const json msgs = json::array({{{"role", "user"}, {"content", " hi "}}, {{"role", "assistant"}, {"content", "ok"}}});
  EXPECT_EQ(render(t, msgs), "[first]U: hi\nA: OK\n END");
  EXPECT_EQ(render(t, msgs, false), "[first]U: hi\nA: OK\n NOEND");
  // {%+ keeps the blanks before a tag; +%} keeps the newline after one; comments vanish.
  EXPECT_EQ(render("a\n  {%+ if true +%}\nb{# note #}\n{% endif %}", json::array()), "a\n  \nb");
}

TEST(ChatTemplate, Expressions) {
  const json msgs = json::array({{{"role", "user"}, {"content", "Hello"}}});
  auto one = [&](const std::string& expr) { return render("{{ " + expr + " }}", msgs); };
  EXPECT_EQ(one("messages | length"), "1");
  EXPECT_EQ(one("messages[0].content | lower"), "hello");
  EXPECT_EQ(one("messages[-1]['role'] ~ '!'"), "user!");
  EXPECT_EQ(one("'ell' in messages[0].content"), "True");
  EXPECT_EQ(one("'role' in messages[0] and not ('tools' in messages[0])"), "True");
  EXPECT_EQ(one("missing is defined"), "False");
  EXPECT_EQ(one("missing"), "");
  EXPECT_EQ(one("messages[0].get('name', 'anon')"), "anon");
  EXPECT_EQ(one("7 % 3 + 2 * 3 - 1"), "6");
  EXPECT_EQ(one("messages[0].content[1:3]"), "el");
  EXPECT_EQ(one("none is none"), "True");
  EXPECT_EQ(one("[1, 2] + [3]"), "[1, 2, 3]");
  EXPECT_EQ(one("'a' if messages[0].content.startswith('He') else 'b'"), "a");
  EXPECT_EQ(one("eos_token + bos_token"), "</s><s>");
  EXPECT_EQ(render("{% for m in messages %}{{ loop.index }}/{{ loop.length }}{{ loop.last }}{% endfor %}",
                   json::array({{{"role", "user"}, {"content", "a"}}, {{"role", "user"}, {"content", "b"}}})),
            "1/2False2/2True");
  // {% set %} inside a loop does not leak out of it.
  EXPECT_EQ(render("{% set x = 'out' %}{% for m in messages %}{% set x = 'in' %}{% endfor %}{{ x }}", msgs), "out");
}

TEST(ChatTemplate, BeyondTheSubsetFailsAtParseTime) {
  for (const char* t : {"{% macro f() %}{% endmacro %}", "{{ messages | tojson }}", "{% set ns = namespace(a=1) %}",
                        "{% for k, v in x %}{% endfor %}", "{{ strftime_now('%Y') }}", "{{ x | join(', ') }}"}) {
    try {
      ChatTemplate::parse(t);
      ADD_FAILURE() << "parsed: " << t;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::Unsupported) << t << ": " << e.what();
    }
  }
  for (const char* t : {"{% if x %}", "{{ x ", "{% endfor %}", "{{ 'abc }}"}) {
    EXPECT_THROW(ChatTemplate::parse(t), Error) << t;
  }
  // Unsupported templates fall back to the plain one, and say why.
  ChatPrompt p = ChatPrompt::from_source(std::string("{{ messages | tojson }}"));
  EXPECT_EQ(p.name(), "plain");
  EXPECT_NE(p.fallback_reason().find("tojson"), std::string::npos) << p.fallback_reason();
  EXPECT_EQ(p.render(json::array({{{"role", "system"}, {"content", "S"}}, {{"role", "user"}, {"content", "U"}}})),
            "system: S\nuser: U\nassistant:");
}

TEST(ChatTemplate, RuntimeTypeErrorsAreTheRequestsFault) {
  try {
    render("{{ messages[0].content + 1 }}", json::array({{{"role", "user"}, {"content", "x"}}}));
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument);
  }
}

TEST(ChatMessages, ParsedAndChecked) {
  json m = server::parse_messages(json::parse(
      R"({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                       {"role": "assistant", "content": null, "name": "bot"}]})"));
  EXPECT_EQ(m[0]["content"], "a\nb");
  EXPECT_EQ(m[1]["content"], "");
  EXPECT_EQ(m[1]["name"], "bot");
  for (const char* bad : {R"({})", R"({"messages": "hi"})", R"({"messages": []})", R"({"messages": [1]})",
                          R"({"messages": [{"content": "x"}]})", R"({"messages": [{"role": "wizard", "content": "x"}]})",
                          R"({"messages": [{"role": "user", "content": 5}]})", R"({"messages": [{"role": "user"}]})",
                          R"({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]})"}) {
    try {
      server::parse_messages(json::parse(bad));
      ADD_FAILURE() << "accepted " << bad;
    } catch (const server::ApiError& e) {
      EXPECT_EQ(e.status(), 400) << bad;
      EXPECT_EQ(e.param(), "messages") << bad;
    }
  }
}

}  // namespace
}  // namespace statelm
