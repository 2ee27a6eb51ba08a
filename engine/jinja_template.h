#pragma once
// A small Jinja interpreter: enough of Jinja2 to render Hugging Face chat templates exactly as
// transformers does (trim_blocks and lstrip_blocks on, transformers' tojson, raise_exception).
// The supported syntax is listed in engine/jinja_parser.h. Filters: length/count, tojson, trim,
// upper, lower, capitalize, title, default/d, join, first, last, list, string, int, float,
// items, abs, replace, safe, select, reject, selectattr, rejectattr, map. Tests: defined, undefined, none, string, number, integer, float,
// boolean, true, false, mapping, iterable, sequence, callable, odd, even, divisibleby, eq, ne.
// Methods: str.startswith/endswith/split/strip/lstrip/rstrip/upper/lower/title/capitalize/
// replace/find/count/join, dict.items/keys/values/get. Globals: namespace(), dict(), range(),
// raise_exception(), strftime_now(). Anything else is an Error naming it with its line and column.
#include <string>

#include "engine/jinja_parser.h"
#include "engine/jinja_value.h"

namespace mxmoe::jinja {

class Template {
 public:
  // Parses `source` now (syntax errors are thrown here); `what` names it in errors.
  Template(const std::string& source, const std::string& what);

  // Renders with `variables` (a dict) as the global scope.
  std::string render(const Value& variables) const;

 private:
  std::string what_;
  NodePtr root_;
};

}  // namespace mxmoe::jinja
