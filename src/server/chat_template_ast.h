// The parsed form of a chat template (server/chat_template.h): statements and expressions as
// small trees. Private to chat_template*.cpp.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace statelm::server::tmpl {

enum class ExprKind {
  Literal,      // value
  List,         // [args...]
  Name,         // name
  Attr,         // args[0].name
  Index,        // args[0][args[1]]
  Slice,        // args[0][args[1]:args[2]] (a null arg = open end)
  Call,         // args[0](args[1..]): methods and raise_exception
  Filter,       // args[0] | name
  Test,         // args[0] is [not] name
  Not,          // not args[0]
  Negate,       // -args[0]
  Binary,       // args[0] name args[1]: + - * / % ~ == != < > <= >= in "not in"
  And, Or,      // short-circuit
  Conditional,  // args[0] if args[1] else args[2] (args[2] may be null: undefined)
};

struct Expr {
  ExprKind kind = ExprKind::Literal;
  std::string name;
  nlohmann::json value;
  bool negated = false;  // Test: "is not"
  std::vector<std::unique_ptr<Expr>> args;
};

enum class NodeKind { Block, Text, Output, If, For, Set };

struct Node {
  NodeKind kind = NodeKind::Block;
  std::string text;                            // Text: the text; For: the loop variable; Set: the name
  std::unique_ptr<Expr> expr;                  // Output, For (the iterable), Set (the value)
  std::vector<std::unique_ptr<Node>> children;  // Block: statements; For: {body}
  // If: (condition, body) for the if and each elif, then the else body (may be null).
  std::vector<std::pair<std::unique_ptr<Expr>, std::unique_ptr<Node>>> branches;
  std::unique_ptr<Node> else_body;
};

// Error(Unsupported) / Error(Format) as ChatTemplate::parse documents.
std::unique_ptr<Node> parse(std::string_view source);

}  // namespace statelm::server::tmpl
