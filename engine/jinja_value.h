#pragma once
// Values of the Jinja subset used by chat templates (engine/jinja_template.h): Python-like undefined,
// None, bool, int, float, str, list, dict (insertion-ordered, like Python's), namespace and
// callables, with Python's truthiness, equality, str() and json.dumps formatting.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace mxmoe::jinja {

struct Value;
using List = std::vector<Value>;
using KwArgs = std::vector<std::pair<std::string, Value>>;
using Function = std::function<Value(const List& args, const KwArgs& kwargs)>;

struct Dict {
  std::vector<std::pair<std::string, Value>> items;
  const Value* find(const std::string& key) const;
  void set(const std::string& key, Value v);
};

struct Value {
  enum class Kind { undefined, none, boolean, integer, number, string, list, dict, function };
  Kind kind = Kind::undefined;
  bool b = false;
  int64_t i = 0;
  double d = 0;
  std::string s;
  std::shared_ptr<List> list;
  std::shared_ptr<Dict> dict;  // also a namespace()'s attributes (mutable through `set ns.x`)
  std::shared_ptr<Function> fn;
  bool is_namespace = false;
  bool is_tuple = false;  // a list written (a, b) or made by items(): prints as a tuple

  Value() = default;
  static Value none() { Value v; v.kind = Kind::none; return v; }
  static Value boolean(bool x) { Value v; v.kind = Kind::boolean; v.b = x; return v; }
  static Value integer(int64_t x) { Value v; v.kind = Kind::integer; v.i = x; return v; }
  static Value number(double x) { Value v; v.kind = Kind::number; v.d = x; return v; }
  static Value string(std::string x) { Value v; v.kind = Kind::string; v.s = std::move(x); return v; }
  static Value make_list(List x = {}) { Value v; v.kind = Kind::list; v.list = std::make_shared<List>(std::move(x)); return v; }
  static Value make_dict(Dict x = {}) { Value v; v.kind = Kind::dict; v.dict = std::make_shared<Dict>(std::move(x)); return v; }
  static Value function(Function f) { Value v; v.kind = Kind::function; v.fn = std::make_shared<Function>(std::move(f)); return v; }

  bool is_undefined() const { return kind == Kind::undefined; }
  bool is_none() const { return kind == Kind::none; }
  bool is_string() const { return kind == Kind::string; }
  bool is_list() const { return kind == Kind::list; }
  bool is_dict() const { return kind == Kind::dict; }
  bool is_numeric() const { return kind == Kind::integer || kind == Kind::number || kind == Kind::boolean; }
  double as_double() const { return kind == Kind::number ? d : kind == Kind::integer ? static_cast<double>(i) : b; }

  bool truthy() const;
  // Python str(): what {{ value }} prints (undefined prints nothing).
  std::string str() const;
  // Python repr(), used inside str() of lists and dicts.
  std::string repr() const;
  std::string type_name() const;
};

bool equal(const Value& a, const Value& b);

// JSON (nlohmann ordered, so object key order is kept) -> Value.
Value from_json(const nlohmann::ordered_json& j);
// Python's json.dumps(v, ensure_ascii=False, indent=indent) (indent < 0: None), as transformers'
// tojson filter renders it.
std::string to_json(const Value& v, int indent = -1);

}  // namespace mxmoe::jinja
