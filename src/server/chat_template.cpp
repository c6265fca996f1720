// Rendering a parsed chat template (server/chat_template.h). Values are JSON values with
// Python's semantics where templates can tell (truthiness, str(), ==, +, in, slices), plus
// Jinja's undefined (a discarded JSON value): a missing variable, key or attribute, which prints
// as "" and is false.
#include "server/chat_template.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>

#include "core/error.h"
#include "server/chat_template_ast.h"

namespace statelm::server {

using nlohmann::json;
using tmpl::Expr;
using tmpl::ExprKind;
using tmpl::Node;
using tmpl::NodeKind;

namespace {

const json kUndefined = json(json::value_t::discarded);

bool undefined(const json& v) { return v.is_discarded(); }

[[noreturn]] void render_error(const std::string& what) {
  fail(ErrorKind::InvalidArgument, "messages: the chat template failed: ", what);
}

bool truthy(const json& v) {
  if (undefined(v) || v.is_null()) return false;
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number()) return v.get<double>() != 0;
  if (v.is_string() || v.is_array() || v.is_object()) return !v.empty();
  return true;
}

std::string repr(const json& v);

// Python's str().
std::string str(const json& v) {
  if (undefined(v)) return "";
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "None";
  if (v.is_boolean()) return v.get<bool>() ? "True" : "False";
  if (v.is_number_float()) {
    std::string s = v.dump();
    if (s.find_first_of(".eE") == std::string::npos) s += ".0";
    return s;
  }
  if (v.is_number()) return v.dump();
  return repr(v);
}

std::string repr(const json& v) {
  if (v.is_string()) {
    std::string s = "'";
    for (char c : v.get<std::string>()) {
      if (c == '\'' || c == '\\') s += '\\';
      if (c == '\n') s += "\\n";
      else s += c;
    }
    return s + "'";
  }
  if (v.is_array()) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + repr(v[i]);
    return s + "]";
  }
  if (v.is_object()) {
    std::string s = "{";
    bool first = true;
    for (auto it = v.begin(); it != v.end(); ++it, first = false) s += (first ? "" : ", ") + repr(json(it.key())) + ": " + repr(it.value());
    return s + "}";
  }
  return str(v);
}

const char* type_name(const json& v) { return undefined(v) ? "undefined" : v.type_name(); }

// Python-style string and list indices: negative from the end; out of range is undefined.
json item(const json& v, const json& key) {
  if (v.is_object()) {
    if (!key.is_string()) return kUndefined;
    auto it = v.find(key.get<std::string>());
    return it == v.end() ? kUndefined : *it;
  }
  if ((v.is_array() || v.is_string()) && key.is_number_integer()) {
    const int64_t n = v.is_array() ? int64_t(v.size()) : int64_t(v.get_ref<const std::string&>().size());
    int64_t i = key.get<int64_t>();
    if (i < 0) i += n;
    if (i < 0 || i >= n) return kUndefined;
    return v.is_array() ? v[size_t(i)] : json(v.get_ref<const std::string&>().substr(size_t(i), 1));
  }
  return kUndefined;
}

json slice(const json& v, const json& lo, const json& hi) {
  if (!v.is_array() && !v.is_string()) render_error(str_cat("cannot slice a ", type_name(v)));
  const int64_t n = v.is_array() ? int64_t(v.size()) : int64_t(v.get_ref<const std::string&>().size());
  auto bound = [n](const json& b, int64_t dflt) {
    if (b.is_null() || undefined(b)) return dflt;
    if (!b.is_number_integer()) render_error("slice bounds must be integers");
    int64_t i = b.get<int64_t>();
    if (i < 0) i += n;
    return std::clamp<int64_t>(i, 0, n);
  };
  const int64_t a = bound(lo, 0), b = std::max(a, bound(hi, n));
  if (v.is_string()) return v.get_ref<const std::string&>().substr(size_t(a), size_t(b - a));
  return json(v.begin() + a, v.begin() + b);
}

bool contains(const json& haystack, const json& needle) {
  if (haystack.is_string()) {
    if (!needle.is_string()) render_error(str_cat("'in <string>' needs a string, not ", type_name(needle)));
    return haystack.get_ref<const std::string&>().find(needle.get_ref<const std::string&>()) != std::string::npos;
  }
  if (haystack.is_array()) return std::find(haystack.begin(), haystack.end(), needle) != haystack.end();
  if (haystack.is_object()) return needle.is_string() && haystack.contains(needle.get<std::string>());
  render_error(str_cat("'in' needs a string, list or mapping, not ", type_name(haystack)));
}

std::string strip(std::string s, bool left, bool right, const std::string& chars = " \t\n\r\f\v") {
  if (right) s.erase(s.find_last_not_of(chars) + 1);
  if (left) s.erase(0, std::min(s.size(), s.find_first_not_of(chars)));
  return s;
}

// ASCII case mapping; other characters pass through (Python maps all of Unicode; chat templates
// apply upper/lower to role names).
std::string map_case(std::string s, bool upper) {
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x80) c = char(upper ? std::toupper(c) : std::tolower(c));
  return s;
}

const std::string& need_string(const json& v, const std::string& what) {
  if (!v.is_string()) render_error(str_cat(what, " needs a string, not ", type_name(v)));
  return v.get_ref<const std::string&>();
}

int64_t length(const json& v) {
  if (v.is_string()) {  // code points, as Python's len() (strings here are valid UTF-8)
    int64_t n = 0;
    for (unsigned char c : v.get_ref<const std::string&>()) n += (c & 0xC0) != 0x80;
    return n;
  }
  if (v.is_array() || v.is_object()) return int64_t(v.size());
  render_error(str_cat("length of a ", type_name(v)));
}

json arithmetic(const std::string& op, const json& a, const json& b) {
  if (op == "~") return str(a) + str(b);
  if (op == "+") {
    if (a.is_string() && b.is_string()) return a.get<std::string>() + b.get<std::string>();
    if (a.is_array() && b.is_array()) {
      json r = a;
      r.insert(r.end(), b.begin(), b.end());
      return r;
    }
  }
  if (op == "*" && a.is_string() && b.is_number_integer()) {
    std::string r;
    for (int64_t i = 0; i < b.get<int64_t>(); ++i) r += a.get<std::string>();
    return r;
  }
  if (!a.is_number() || !b.is_number() || a.is_boolean() || b.is_boolean())
    render_error(str_cat("unsupported operand types for ", op, ": ", type_name(a), " and ", type_name(b)));
  const bool ints = a.is_number_integer() && b.is_number_integer();
  if (op == "/") {
    if (b.get<double>() == 0) render_error("division by zero");
    return a.get<double>() / b.get<double>();
  }
  if (ints) {
    const int64_t x = a.get<int64_t>(), y = b.get<int64_t>();
    if (op == "+") return x + y;
    if (op == "-") return x - y;
    if (op == "*") return x * y;
    if (y == 0) render_error("modulo by zero");
    return ((x % y) + y) % y;  // Python's sign rule
  }
  const double x = a.get<double>(), y = b.get<double>();
  if (op == "+") return x + y;
  if (op == "-") return x - y;
  if (op == "*") return x * y;
  if (y == 0) render_error("modulo by zero");
  return x - y * std::floor(x / y);
}

bool compare(const std::string& op, const json& a, const json& b) {
  if (op == "==") return !undefined(a) && !undefined(b) && a == b;
  if (op == "!=") return !(!undefined(a) && !undefined(b) && a == b);
  const bool numbers = a.is_number() && b.is_number(), strings = a.is_string() && b.is_string();
  if (!numbers && !strings) render_error(str_cat("'", op, "' between ", type_name(a), " and ", type_name(b)));
  if (op == "<") return a < b;
  if (op == ">") return b < a;
  if (op == "<=") return !(b < a);
  return !(a < b);
}

class Renderer {
 public:
  explicit Renderer(const ChatTemplateVars& vars) {
    scopes_.push_back({{"messages", vars.messages},
                       {"add_generation_prompt", vars.add_generation_prompt},
                       {"bos_token", vars.bos_token},
                       {"eos_token", vars.eos_token}});
  }

  void run(const Node& n, std::string& out) {
    switch (n.kind) {
      case NodeKind::Block:
        for (const auto& c : n.children) run(*c, out);
        break;
      case NodeKind::Text:
        out += n.text;
        break;
      case NodeKind::Output:
        out += str(eval(*n.expr));
        break;
      case NodeKind::Set:
        scopes_.back()[n.text] = eval(*n.expr);
        break;
      case NodeKind::If:
        for (const auto& [cond, body] : n.branches)
          if (truthy(eval(*cond))) return run(*body, out);
        if (n.else_body) run(*n.else_body, out);
        break;
      case NodeKind::For: {
        const json seq = eval(*n.expr);
        json items = json::array();
        if (seq.is_array()) items = seq;
        else if (seq.is_object()) for (auto it = seq.begin(); it != seq.end(); ++it) items.push_back(it.key());
        else if (seq.is_string()) for (char c : seq.get<std::string>()) items.push_back(std::string(1, c));
        else if (!undefined(seq)) render_error(str_cat("cannot loop over a ", type_name(seq)));
        const int64_t len = int64_t(items.size());
        for (int64_t i = 0; i < len; ++i) {
          // A fresh scope per iteration: {% set %} inside a loop does not leak out (Jinja).
          scopes_.push_back({{n.text, items[size_t(i)]},
                             {"loop", json{{"index", i + 1}, {"index0", i}, {"first", i == 0}, {"last", i == len - 1},
                                           {"length", len}, {"revindex", len - i}, {"revindex0", len - i - 1}}}});
          run(*n.children[0], out);
          scopes_.pop_back();
        }
        break;
      }
    }
  }

 private:
  json lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it)
      if (auto v = it->find(name); v != it->end()) return v->second;
    return kUndefined;
  }

  json eval(const Expr& e) {
    switch (e.kind) {
      case ExprKind::Literal: return e.value;
      case ExprKind::List: {
        json l = json::array();
        for (const auto& a : e.args) l.push_back(eval(*a));
        return l;
      }
      case ExprKind::Name: return lookup(e.name);
      case ExprKind::Attr: return item(eval(*e.args[0]), json(e.name));
      case ExprKind::Index: return item(eval(*e.args[0]), eval(*e.args[1]));
      case ExprKind::Slice:
        return slice(eval(*e.args[0]), e.args[1] ? eval(*e.args[1]) : json(), e.args[2] ? eval(*e.args[2]) : json());
      case ExprKind::Call: return call(e);
      case ExprKind::Filter: {
        const json v = eval(*e.args[0]);
        if (e.name == "length" || e.name == "count") return length(v);
        const std::string& s = need_string(v, "the filter " + e.name);
        if (e.name == "trim") return strip(s, true, true);
        return map_case(s, e.name == "upper");
      }
      case ExprKind::Test: return test(e.name, eval(*e.args[0])) != e.negated;
      case ExprKind::Not: return !truthy(eval(*e.args[0]));
      case ExprKind::Negate: {
        const json v = eval(*e.args[0]);
        if (!v.is_number() || v.is_boolean()) render_error(str_cat("unary - on a ", type_name(v)));
        return v.is_number_integer() ? json(-v.get<int64_t>()) : json(-v.get<double>());
      }
      case ExprKind::And: {
        json a = eval(*e.args[0]);
        return truthy(a) ? eval(*e.args[1]) : a;
      }
      case ExprKind::Or: {
        json a = eval(*e.args[0]);
        return truthy(a) ? a : eval(*e.args[1]);
      }
      case ExprKind::Conditional:
        if (truthy(eval(*e.args[1]))) return eval(*e.args[0]);
        return e.args[2] ? eval(*e.args[2]) : kUndefined;
      case ExprKind::Binary: {
        const json a = eval(*e.args[0]), b = eval(*e.args[1]);
        if (e.name == "in") return contains(b, a);
        if (e.name == "not in") return !contains(b, a);
        if (e.name.size() == 1 && std::string_view("+-*/%~").find(e.name[0]) != std::string_view::npos)
          return arithmetic(e.name, a, b);
        return compare(e.name, a, b);
      }
    }
    render_error("unknown expression");
  }

  static bool test(const std::string& t, const json& v) {
    if (t == "defined") return !undefined(v);
    if (t == "undefined") return undefined(v);
    if (t == "none") return v.is_null();
    if (t == "string") return v.is_string();
    if (t == "number") return v.is_number() && !v.is_boolean();
    if (t == "mapping") return v.is_object();
    if (t == "iterable") return v.is_array() || v.is_object() || v.is_string();
    if (t == "true") return v.is_boolean() && v.get<bool>();
    return v.is_boolean() && !v.get<bool>();  // "false"
  }

  json call(const Expr& e) {
    std::vector<json> args;
    for (size_t i = 1; i < e.args.size(); ++i) args.push_back(eval(*e.args[i]));
    if (e.args[0]->kind == ExprKind::Name) {  // raise_exception, the one function (checked at parse)
      fail(ErrorKind::InvalidArgument, "messages: ", args.empty() ? std::string("the chat template raised an error") : str(args[0]));
    }
    const json self = eval(*e.args[0]->args[0]);
    const std::string& m = e.name;
    if (m == "get") {
      if (!self.is_object()) render_error(str_cat(".get() on a ", type_name(self)));
      if (args.empty()) render_error(".get() needs a key");
      json v = item(self, args[0]);
      return undefined(v) ? (args.size() > 1 ? args[1] : json(nullptr)) : v;
    }
    const std::string& s = need_string(self, "." + m + "()");
    if (m == "upper" || m == "lower") return map_case(s, m == "upper");
    if (m == "startswith" || m == "endswith") {
      const std::string& x = need_string(args.empty() ? kUndefined : args[0], "." + m + "()");
      return m == "startswith" ? s.rfind(x, 0) == 0 : s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
    }
    // strip / lstrip / rstrip, optionally with the characters to strip.
    const std::string chars = args.empty() || args[0].is_null() ? " \t\n\r\f\v" : need_string(args[0], "." + m + "()");
    return strip(s, m != "rstrip", m != "lstrip", chars);
  }

  std::vector<std::map<std::string, json>> scopes_;
};

}  // namespace

ChatTemplate ChatTemplate::parse(std::string_view source) {
  ChatTemplate t;
  t.root_ = tmpl::parse(source);
  return t;
}

std::string ChatTemplate::render(const ChatTemplateVars& vars) const {
  std::string out;
  Renderer(vars).run(*root_, out);
  return out;
}

}  // namespace statelm::server
