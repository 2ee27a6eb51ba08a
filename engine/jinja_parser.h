#pragma once
// Lexer and parser of the Jinja subset used by chat templates: text, {{ expr }}, {# comments #},
// {% if/elif/else/endif %}, {% for a[, b] in expr [if cond] %}...{% else %}...{% endfor %},
// {% set name = expr %}, {% set ns.attr = expr %}, {% set name %}...{% endset %},
// {% macro name(args) %}...{% endmacro %}, {% break %}/{% continue %}, whitespace control with '-' plus the trim_blocks/lstrip_blocks
// settings transformers renders with. Expressions: literals (str, int, float, true/false/none,
// lists, dicts, tuples), names, attribute/item access, slices, calls with keyword arguments,
// filters (|name(args)), tests (is [not] name), unary/binary operators with Python precedence
// and `a if cond else b`.
#include <memory>
#include <string>
#include <vector>

#include "engine/jinja_value.h"

namespace mxmoe::jinja {

struct Node;
using NodePtr = std::unique_ptr<Node>;

struct Node {
  enum class Kind {
    // statements
    block, text, output, if_, for_, set, macro, break_, continue_,
    // expressions
    literal, name, getattr, getitem, slice, call, filter, test, unary, binary, list, dict, cond,
  };
  Kind kind;
  size_t line = 0, col = 0;  // 1-based position in the template source
  std::string name;          // text, identifier, attribute, operator, filter/test name
  Value value;               // literal
  std::vector<NodePtr> kids;
  std::vector<std::string> names;  // for targets, macro params, keyword-argument names
  bool negated = false;            // `is not`
};

// Parses `source`; syntax errors are mxmoe::Error "<what>: line L, column C: ...".
NodePtr parse(const std::string& source, const std::string& what);

}  // namespace mxmoe::jinja
