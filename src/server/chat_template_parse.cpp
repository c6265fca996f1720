// Parsing a chat template (server/chat_template.h) into statements and expressions.
//
// Two passes. The lexer cuts the source into text, {{ expression }} and {% statement %} segments
// and applies whitespace control as transformers' jinja2 environment does: `-` strips all
// whitespace on that side; otherwise lstrip_blocks removes the spaces and tabs between a line's
// start and a {% or {# tag, and trim_blocks removes the one newline after %} or #} (`+` turns
// either off). The parser then builds the tree: a recursive descent over segments for
// statements, and over tokens with Jinja's precedence for expressions.
#include <algorithm>
#include <cctype>
#include <set>

#include "core/error.h"
#include "server/chat_template_ast.h"

namespace statelm::server::tmpl {

namespace {

using nlohmann::json;

struct Segment {
  enum Type { Text, Expression, Statement } type;
  std::string text;
  size_t offset;  // in the source, for error messages
};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// The end of a tag opened at `from` (the index of `close`), skipping string literals so that a
// "%}" inside quotes does not end it.
size_t find_close(std::string_view src, size_t from, std::string_view close) {
  char quote = 0;
  for (size_t i = from; i + 1 < src.size(); ++i) {
    const char c = src[i];
    if (quote) {
      if (c == '\\') ++i;
      else if (c == quote) quote = 0;
    } else if (c == '\'' || c == '"') {
      quote = c;
    } else if (src.compare(i, close.size(), close) == 0) {
      return i;
    }
  }
  return std::string_view::npos;
}

std::vector<Segment> lex(std::string_view src) {
  std::vector<Segment> out;
  size_t i = 0;
  bool strip_next = false, trim_newline = false;
  while (i <= src.size()) {
    size_t open = i;
    while (open + 1 < src.size() && !(src[open] == '{' && (src[open + 1] == '{' || src[open + 1] == '%' || src[open + 1] == '#')))
      ++open;
    if (open + 1 >= src.size()) open = src.size();
    std::string text(src.substr(i, open - i));
    if (strip_next) {
      text.erase(0, std::find_if_not(text.begin(), text.end(), is_space) - text.begin());
    } else if (trim_newline) {
      if (text.rfind("\r\n", 0) == 0) text.erase(0, 2);
      else if (text.rfind('\n', 0) == 0) text.erase(0, 1);
    }
    if (open == src.size()) {
      if (!text.empty()) out.push_back({Segment::Text, std::move(text), i});
      break;
    }
    const char kind = src[open + 1];
    const char mark = open + 2 < src.size() ? src[open + 2] : 0;
    if (mark == '-') {
      text.erase(std::find_if_not(text.rbegin(), text.rend(), is_space).base(), text.end());
    } else if (kind != '{' && mark != '+') {
      // lstrip_blocks: only when nothing but blanks stands between the line's start and the tag.
      const size_t line = src.rfind('\n', open == 0 ? 0 : open - 1);
      const size_t start = line == std::string_view::npos ? 0 : line + 1;
      const bool blank = start >= i && src.substr(start, open - start).find_first_not_of(" \t") == std::string_view::npos;
      if (blank) text.erase(text.size() - std::min(text.size(), open - start));
    }
    if (!text.empty()) out.push_back({Segment::Text, std::move(text), i});
    const std::string_view close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    const size_t body = open + 2 + (mark == '-' || mark == '+');
    const size_t end = kind == '#' ? src.find(close, body) : find_close(src, body, close);
    if (end == std::string_view::npos) fail(ErrorKind::Format, "chat template: tag at offset ", open, " is never closed");
    const char rmark = end > body ? src[end - 1] : 0;
    const size_t body_end = end - (rmark == '-' || rmark == '+');
    if (kind != '#')
      out.push_back({kind == '{' ? Segment::Expression : Segment::Statement, std::string(src.substr(body, body_end - body)), open});
    strip_next = rmark == '-';
    trim_newline = !strip_next && kind != '{' && rmark != '+';
    i = end + 2;
  }
  return out;
}

struct Token {
  enum Type { Name, String, Number, Op, End } type = End;
  std::string text;
  json value;
};

[[noreturn]] void unsupported(size_t offset, const std::string& what) {
  fail(ErrorKind::Unsupported, "chat template: ", what, " (offset ", offset, ") is beyond statelm's Jinja subset");
}
[[noreturn]] void malformed(size_t offset, const std::string& what) {
  fail(ErrorKind::Format, "chat template: ", what, " (offset ", offset, ")");
}

std::vector<Token> tokenize(const Segment& seg) {
  const std::string& s = seg.text;
  std::vector<Token> out;
  size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    if (is_space(c)) {
      ++i;
    } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t j = i;
      while (j < s.size() && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      out.push_back({Token::Name, s.substr(i, j - i), {}});
      i = j;
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t j = i;
      while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
      const bool is_float = j + 1 < s.size() && s[j] == '.' && std::isdigit(static_cast<unsigned char>(s[j + 1]));
      if (is_float)
        for (++j; j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]));) ++j;
      const std::string num = s.substr(i, j - i);
      out.push_back({Token::Number, num, is_float ? json(std::stod(num)) : json(std::stoll(num))});
      i = j;
    } else if (c == '\'' || c == '"') {
      std::string v;
      size_t j = i + 1;
      for (; j < s.size() && s[j] != c; ++j) {
        if (s[j] != '\\' || j + 1 == s.size()) {
          v += s[j];
          continue;
        }
        // Python's escapes as jinja2 decodes them (the common ones; \x, \u etc. are refused).
        switch (const char e = s[++j]) {
          case 'n': v += '\n'; break;
          case 't': v += '\t'; break;
          case 'r': v += '\r'; break;
          case '\\': case '\'': case '"': v += e; break;
          case '\n': break;
          default: unsupported(seg.offset, str_cat("the string escape \\", e));
        }
      }
      if (j == s.size()) malformed(seg.offset, "unterminated string");
      out.push_back({Token::String, s.substr(i, j + 1 - i), json(v)});
      i = j + 1;
    } else {
      static const char* kTwo[] = {"==", "!=", "<=", ">=", "//", "**"};
      std::string op(1, c);
      for (const char* t : kTwo)
        if (s.compare(i, 2, t) == 0) op = t;
      if (op == "//" || op == "**" || op == "{" || op == "}") unsupported(seg.offset, "the operator " + op);
      if (op.size() == 1 && std::string_view("()[].,:|+-*/%~<>=").find(c) == std::string_view::npos)
        malformed(seg.offset, str_cat("unexpected character '", c, "'"));
      out.push_back({Token::Op, op, {}});
      i += op.size();
    }
  }
  out.push_back({});
  return out;
}

const std::set<std::string, std::less<>> kFilters{"upper", "lower", "trim", "length", "count"};
const std::set<std::string, std::less<>> kTests{"defined", "undefined", "none", "string", "number", "mapping", "iterable", "true", "false"};
const std::set<std::string, std::less<>> kMethods{"strip", "lstrip", "rstrip", "upper", "lower", "startswith", "endswith", "get"};

// Expressions, Jinja's precedence from loosest to tightest: conditional, or, and, not,
// comparisons, + -, ~, * / %, unary minus, then postfix (.attr [index] (call)) and | filters /
// is tests.
class ExprParser {
 public:
  ExprParser(const Segment& seg) : seg_(seg), toks_(tokenize(seg)) {}

  std::unique_ptr<Expr> expression() {
    auto e = or_expr();
    if (!is_name("if")) return e;
    ++pos_;
    auto c = make(ExprKind::Conditional, "", std::move(e), or_expr());
    if (is_name("else")) {
      ++pos_;
      c->args.push_back(expression());
    } else {
      c->args.push_back(nullptr);
    }
    return c;
  }
  bool is_name(std::string_view n) const { return toks_[pos_].type == Token::Name && toks_[pos_].text == n; }
  bool is_op(std::string_view o) const { return toks_[pos_].type == Token::Op && toks_[pos_].text == o; }
  bool at_end() const { return toks_[pos_].type == Token::End; }
  std::string name() {
    if (toks_[pos_].type != Token::Name) fail_here("expected a name");
    return toks_[pos_++].text;
  }
  void expect_op(std::string_view o) {
    if (!is_op(o)) fail_here(str_cat("expected '", o, "'"));
    ++pos_;
  }
  void expect_end() {
    if (!at_end()) fail_here("unexpected '" + toks_[pos_].text + "'");
  }
  [[noreturn]] void fail_here(const std::string& what) const {
    malformed(seg_.offset, str_cat(what, " in '", seg_.text, "'"));
  }
  size_t offset() const { return seg_.offset; }

 private:
  static std::unique_ptr<Expr> make(ExprKind k, std::string name, std::unique_ptr<Expr> a = nullptr,
                                    std::unique_ptr<Expr> b = nullptr) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->name = std::move(name);
    if (a) e->args.push_back(std::move(a));
    if (b) e->args.push_back(std::move(b));
    return e;
  }

  std::unique_ptr<Expr> or_expr() {
    auto e = and_expr();
    while (is_name("or")) {
      ++pos_;
      e = make(ExprKind::Or, "", std::move(e), and_expr());
    }
    return e;
  }
  std::unique_ptr<Expr> and_expr() {
    auto e = not_expr();
    while (is_name("and")) {
      ++pos_;
      e = make(ExprKind::And, "", std::move(e), not_expr());
    }
    return e;
  }
  std::unique_ptr<Expr> not_expr() {
    if (!is_name("not")) return compare();
    ++pos_;
    return make(ExprKind::Not, "", not_expr());
  }
  std::unique_ptr<Expr> compare() {
    auto e = additive();
    for (;;) {
      std::string op;
      if (is_op("==") || is_op("!=") || is_op("<") || is_op(">") || is_op("<=") || is_op(">=") || is_name("in")) {
        op = toks_[pos_++].text;
      } else if (is_name("not") && toks_[pos_ + 1].type == Token::Name && toks_[pos_ + 1].text == "in") {
        pos_ += 2;
        op = "not in";
      } else {
        return e;
      }
      e = make(ExprKind::Binary, op, std::move(e), additive());
    }
  }
  std::unique_ptr<Expr> additive() {
    auto e = concat();
    while (is_op("+") || is_op("-")) {
      std::string op = toks_[pos_++].text;
      e = make(ExprKind::Binary, op, std::move(e), concat());
    }
    return e;
  }
  std::unique_ptr<Expr> concat() {
    auto e = multiplicative();
    while (is_op("~")) {
      ++pos_;
      e = make(ExprKind::Binary, "~", std::move(e), multiplicative());
    }
    return e;
  }
  std::unique_ptr<Expr> multiplicative() {
    auto e = unary();
    while (is_op("*") || is_op("/") || is_op("%")) {
      std::string op = toks_[pos_++].text;
      e = make(ExprKind::Binary, op, std::move(e), unary());
    }
    return e;
  }
  std::unique_ptr<Expr> unary() {
    if (is_op("-")) {
      ++pos_;
      return make(ExprKind::Negate, "", unary());
    }
    auto e = postfix(primary());
    // Filters and tests bind tighter than any operator: `a + b | upper` is a + (b | upper).
    for (;;) {
      if (is_op("|")) {
        ++pos_;
        const std::string f = name();
        if (!kFilters.count(f)) unsupported(seg_.offset, "the filter '" + f + "'");
        if (is_op("(")) unsupported(seg_.offset, "filter arguments");
        e = make(ExprKind::Filter, f, std::move(e));
      } else if (is_name("is")) {
        ++pos_;
        bool negated = false;
        if (is_name("not")) {
          ++pos_;
          negated = true;
        }
        const std::string t = is_name("none") || is_name("None") ? (++pos_, "none") : name();
        if (!kTests.count(t)) unsupported(seg_.offset, "the test '" + t + "'");
        if (is_op("(")) unsupported(seg_.offset, "test arguments");
        e = make(ExprKind::Test, t, std::move(e));
        e->negated = negated;
      } else {
        return e;
      }
    }
  }
  std::unique_ptr<Expr> postfix(std::unique_ptr<Expr> e) {
    for (;;) {
      if (is_op(".")) {
        ++pos_;
        std::string attr = name();
        e = make(ExprKind::Attr, std::move(attr), std::move(e));
      } else if (is_op("[")) {
        ++pos_;
        std::unique_ptr<Expr> lo, hi;
        if (!is_op(":")) lo = expression();
        if (is_op(":")) {
          ++pos_;
          if (!is_op("]")) hi = expression();
          if (is_op(":")) unsupported(seg_.offset, "slice steps");
          auto s = make(ExprKind::Slice, "", std::move(e));
          s->args.push_back(std::move(lo));
          s->args.push_back(std::move(hi));
          e = std::move(s);
        } else {
          if (!lo) fail_here("empty subscript");
          e = make(ExprKind::Index, "", std::move(e), std::move(lo));
        }
        expect_op("]");
      } else if (is_op("(")) {
        ++pos_;
        if (e->kind == ExprKind::Name && e->name != "raise_exception")
          unsupported(seg_.offset, "the function '" + e->name + "'");
        if (e->kind == ExprKind::Attr && !kMethods.count(e->name)) unsupported(seg_.offset, "the method '" + e->name + "'");
        if (e->kind != ExprKind::Name && e->kind != ExprKind::Attr) unsupported(seg_.offset, "calling an expression");
        std::string callee = e->name;  // read before e is moved into the call
        auto call = make(ExprKind::Call, std::move(callee), std::move(e));
        while (!is_op(")")) {
          if (toks_[pos_].type == Token::Name && toks_[pos_ + 1].type == Token::Op && toks_[pos_ + 1].text == "=")
            unsupported(seg_.offset, "keyword arguments");
          call->args.push_back(expression());
          if (!is_op(",")) break;
          ++pos_;
        }
        expect_op(")");
        e = std::move(call);
      } else {
        return e;
      }
    }
  }
  std::unique_ptr<Expr> primary() {
    const Token& t = toks_[pos_];
    if (t.type == Token::String || t.type == Token::Number) {
      ++pos_;
      auto e = make(ExprKind::Literal, "");
      e->value = t.value;
      // Adjacent string literals concatenate, as in Python.
      while (t.type == Token::String && toks_[pos_].type == Token::String)
        e->value = e->value.get<std::string>() + toks_[pos_++].value.get<std::string>();
      return e;
    }
    if (t.type == Token::Name) {
      ++pos_;
      auto e = make(ExprKind::Literal, "");
      if (t.text == "true" || t.text == "True") e->value = true;
      else if (t.text == "false" || t.text == "False") e->value = false;
      else if (t.text == "none" || t.text == "None") e->value = nullptr;
      else e = make(ExprKind::Name, t.text);
      return e;
    }
    if (is_op("(")) {
      ++pos_;
      auto e = expression();
      if (is_op(",")) unsupported(seg_.offset, "tuples");
      expect_op(")");
      return e;
    }
    if (is_op("[")) {
      ++pos_;
      auto e = make(ExprKind::List, "");
      while (!is_op("]")) {
        e->args.push_back(expression());
        if (!is_op(",")) break;
        ++pos_;
      }
      expect_op("]");
      return e;
    }
    if (t.type == Token::End) fail_here("expected an expression");
    fail_here("unexpected '" + t.text + "'");
  }

  const Segment& seg_;
  std::vector<Token> toks_;
  size_t pos_ = 0;
};

class StatementParser {
 public:
  explicit StatementParser(std::vector<Segment> segs) : segs_(std::move(segs)) {}

  std::unique_ptr<Node> document() {
    std::string ended_by;
    auto root = block({}, ended_by);
    return root;
  }

 private:
  static std::unique_ptr<Node> node(NodeKind k) {
    auto n = std::make_unique<Node>();
    n->kind = k;
    return n;
  }

  // Statements until one whose keyword is in `ends` (its name goes to `ended_by`; the parser
  // then sits on it) or the end of the source (`ended_by` empty).
  std::unique_ptr<Node> block(const std::set<std::string, std::less<>>& ends, std::string& ended_by) {
    auto b = node(NodeKind::Block);
    ended_by.clear();
    while (pos_ < segs_.size()) {
      const Segment& s = segs_[pos_];
      if (s.type == Segment::Text) {
        auto t = node(NodeKind::Text);
        t->text = s.text;
        b->children.push_back(std::move(t));
        ++pos_;
        continue;
      }
      ExprParser p(s);
      if (s.type == Segment::Expression) {
        auto o = node(NodeKind::Output);
        o->expr = p.expression();
        p.expect_end();
        b->children.push_back(std::move(o));
        ++pos_;
        continue;
      }
      const std::string keyword = p.name();
      if (ends.count(keyword)) {
        ended_by = keyword;
        return b;
      }
      ++pos_;
      if (keyword == "if") b->children.push_back(if_statement(p));
      else if (keyword == "for") b->children.push_back(for_statement(p));
      else if (keyword == "set") b->children.push_back(set_statement(p));
      else if (keyword == "elif" || keyword == "else" || keyword == "endif" || keyword == "endfor")
        malformed(s.offset, "{% " + keyword + " %} without its opening statement");
      else unsupported(s.offset, "{% " + keyword + " %}");
    }
    if (!ends.empty()) malformed(segs_.empty() ? 0 : segs_.back().offset, "the template ends inside a block (missing {% end... %})");
    return b;
  }

  // The statement at pos_ (the one that ended a block): its parser, past the keyword.
  ExprParser closing() {
    ExprParser p(segs_[pos_++]);
    p.name();
    return p;
  }

  std::unique_ptr<Node> if_statement(ExprParser& p) {
    auto n = node(NodeKind::If);
    auto cond = p.expression();
    p.expect_end();
    for (;;) {
      std::string ended_by;
      auto body = block({"elif", "else", "endif"}, ended_by);
      n->branches.emplace_back(std::move(cond), std::move(body));
      ExprParser q = closing();
      if (ended_by == "elif") {
        cond = q.expression();
        q.expect_end();
        continue;
      }
      q.expect_end();
      if (ended_by == "else") {
        n->else_body = block({"endif"}, ended_by);
        closing().expect_end();
      }
      return n;
    }
  }

  std::unique_ptr<Node> for_statement(ExprParser& p) {
    auto n = node(NodeKind::For);
    n->text = p.name();
    if (p.is_op(",")) unsupported(p.offset(), "tuple unpacking in {% for %}");
    if (!p.is_name("in")) p.fail_here("expected 'in'");
    p.name();
    n->expr = p.expression();
    if (p.is_name("if")) unsupported(p.offset(), "{% for ... if %}");
    if (p.is_name("recursive")) unsupported(p.offset(), "recursive loops");
    p.expect_end();
    std::string ended_by;
    n->children.push_back(block({"endfor", "else"}, ended_by));
    if (ended_by == "else") unsupported(segs_[pos_].offset, "{% for %} ... {% else %}");
    closing().expect_end();
    return n;
  }

  std::unique_ptr<Node> set_statement(ExprParser& p) {
    auto n = node(NodeKind::Set);
    n->text = p.name();
    if (p.is_op(".") || p.is_op("[")) unsupported(p.offset(), "assigning to an attribute");
    if (p.at_end()) unsupported(p.offset(), "{% set %} blocks");
    if (p.is_op(",")) unsupported(p.offset(), "tuple unpacking in {% set %}");
    p.expect_op("=");
    n->expr = p.expression();
    p.expect_end();
    return n;
  }

  std::vector<Segment> segs_;
  size_t pos_ = 0;
};

}  // namespace

std::unique_ptr<Node> parse(std::string_view source) { return StatementParser(lex(source)).document(); }

}  // namespace statelm::server::tmpl
