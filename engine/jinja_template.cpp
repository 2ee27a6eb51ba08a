#include "engine/jinja_template.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <ctime>
#include <unordered_map>

#include "engine/error.h"
#include "engine/utf8.h"

namespace mxmoe::jinja {
namespace {

using Kind = Node::Kind;

std::vector<std::string> code_points(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8::char_len(static_cast<unsigned char>(s[i]));
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

bool is_py_space(const std::string& c) {
  return c.size() == 1 ? std::isspace(static_cast<unsigned char>(c[0])) != 0 : c == "\u00a0" || c == "\u3000";
}

// Python's str.strip/lstrip/rstrip: `chars` undefined/none strips whitespace.
std::string strip(const std::string& s, const Value& chars, bool left, bool right) {
  const auto cps = code_points(s);
  const auto set = chars.is_string() ? code_points(chars.s) : std::vector<std::string>{};
  const auto strippable = [&](const std::string& c) {
    return chars.is_string() ? std::find(set.begin(), set.end(), c) != set.end() : is_py_space(c);
  };
  size_t b = 0, e = cps.size();
  while (left && b < e && strippable(cps[b])) ++b;
  while (right && e > b && strippable(cps[e - 1])) --e;
  std::string out;
  for (size_t k = b; k < e; ++k) out += cps[k];
  return out;
}

// Python's str.split(sep=None, maxsplit=-1).
Value split(const std::string& s, const Value& sep, int64_t maxsplit) {
  List out;
  if (sep.is_string()) {
    if (sep.s.empty()) fail("empty separator");
    size_t last = 0;
    for (size_t p; (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) &&
                   (p = s.find(sep.s, last)) != std::string::npos;
         last = p + sep.s.size()) {
      out.push_back(Value::string(s.substr(last, p - last)));
    }
    out.push_back(Value::string(s.substr(last)));
  } else {
    std::string cur;
    bool in_word = false;
    const auto cps = code_points(s);
    for (size_t k = 0; k < cps.size(); ++k) {
      if (is_py_space(cps[k])) {
        if (in_word) out.push_back(Value::string(cur)), cur.clear(), in_word = false;
        continue;
      }
      if (!in_word && maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
        std::string rest;
        for (size_t r = k; r < cps.size(); ++r) rest += cps[r];
        out.push_back(Value::string(strip(rest, Value(), false, true)));
        return Value::make_list(std::move(out));
      }
      cur += cps[k];
      in_word = true;
    }
    if (in_word) out.push_back(Value::string(cur));
  }
  return Value::make_list(std::move(out));
}

std::string replace_all(std::string s, const std::string& from, const std::string& to, int64_t count = -1) {
  if (from.empty()) return s;
  std::string out;
  size_t last = 0;
  for (size_t p; count != 0 && (p = s.find(from, last)) != std::string::npos; last = p + from.size(), --count) {
    out.append(s, last, p - last).append(to);
  }
  return out.append(s, last, std::string::npos);
}

std::string case_map(const std::string& s, int mode) {  // 0 lower, 1 upper, 2 capitalize, 3 title
  std::string out;
  bool word_start = true;
  for (size_t i = 0; i < s.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const bool alpha = std::isalpha(c) != 0;
    bool up = mode == 1 || (mode == 2 && i == 0) || (mode == 3 && word_start);
    out += static_cast<char>(up ? std::toupper(c) : std::tolower(c));
    word_start = !alpha && c < 0x80;
  }
  return out;
}

class Renderer {
 public:
  Renderer(const std::string& what, const Value& globals) : what_(what) {
    frames_.emplace_back();
    for (const auto& [k, v] : globals.dict->items) frames_.back()[k] = v;
    install_builtins();
  }

  enum class Flow { normal, break_, continue_ };

  Flow exec(const Node& n, std::string& out) {
    switch (n.kind) {
      case Kind::block:
        for (const auto& k : n.kids) {
          const Flow f = exec(*k, out);
          if (f != Flow::normal) return f;
        }
        return Flow::normal;
      case Kind::text: out += n.name; return Flow::normal;
      case Kind::output: out += eval(*n.kids[0]).str(); return Flow::normal;
      case Kind::if_:
        for (size_t k = 0; k + 1 < n.kids.size(); k += 2) {
          if (eval(*n.kids[k]).truthy()) return exec(*n.kids[k + 1], out);
        }
        if (n.kids.size() % 2) return exec(*n.kids.back(), out);
        return Flow::normal;
      case Kind::for_: return exec_for(n, out);
      case Kind::set: {
        Value v;
        if (n.name == "block") {
          std::string body;
          exec(*n.kids[0], body);
          v = Value::string(std::move(body));
        } else {
          v = eval(*n.kids[0]);
        }
        if (n.names.size() == 1) {
          frames_.back()[n.names[0]] = std::move(v);
        } else {
          Value ns = lookup(n.names[0]);
          if (!ns.is_namespace) error(n, "'" + n.names[0] + "' is not a namespace, cannot set ." + n.names[1]);
          ns.dict->set(n.names[1], std::move(v));
        }
        return Flow::normal;
      }
      case Kind::macro: frames_.back()[n.name] = macro(n); return Flow::normal;
      case Kind::break_: return Flow::break_;
      case Kind::continue_: return Flow::continue_;
      default: error(n, "not a statement");
    }
  }

 private:
  [[noreturn]] void error(const Node& n, const std::string& message) const {
    fail(what_, ": line ", n.line, ", column ", n.col, ": ", message);
  }

  Value lookup(const std::string& name) const {
    for (auto it = frames_.rbegin(); it != frames_.rend(); ++it) {
      const auto f = it->find(name);
      if (f != it->end()) return f->second;
    }
    return Value();
  }

  Flow exec_for(const Node& n, std::string& out) {
    const Value seq = eval(*n.kids[0]);
    List items;
    if (seq.is_list()) {
      items = *seq.list;
    } else if (seq.is_dict() && !seq.is_namespace) {
      for (const auto& [k, v] : seq.dict->items) items.push_back(Value::string(k));
    } else if (seq.is_string()) {
      for (auto& c : code_points(seq.s)) items.push_back(Value::string(std::move(c)));
    } else if (!seq.is_undefined()) {
      error(*n.kids[0], "cannot iterate over a " + seq.type_name());
    }
    frames_.emplace_back();
    const auto bind = [&](const Value& item) {
      auto& frame = frames_.back();
      frame.clear();
      if (n.names.size() == 1) {
        frame[n.names[0]] = item;
        return;
      }
      if (!item.is_list() || item.list->size() != n.names.size()) {
        error(n, "cannot unpack a " + item.type_name() + " into " + std::to_string(n.names.size()) + " names");
      }
      for (size_t t = 0; t < n.names.size(); ++t) frame[n.names[t]] = (*item.list)[t];
    };
    if (n.kids[3]) {  // loop filter: drops items before `loop` counts them
      List kept;
      for (const Value& item : items) {
        bind(item);
        if (eval(*n.kids[3]).truthy()) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      frames_.pop_back();
      return n.kids[2] ? exec(*n.kids[2], out) : Flow::normal;
    }
    const auto len = static_cast<int64_t>(items.size());
    for (int64_t k = 0; k < len; ++k) {
      bind(items[static_cast<size_t>(k)]);
      auto& frame = frames_.back();
      Dict loop;
      loop.set("index", Value::integer(k + 1));
      loop.set("index0", Value::integer(k));
      loop.set("revindex", Value::integer(len - k));
      loop.set("revindex0", Value::integer(len - k - 1));
      loop.set("first", Value::boolean(k == 0));
      loop.set("last", Value::boolean(k == len - 1));
      loop.set("length", Value::integer(len));
      loop.set("previtem", k > 0 ? items[static_cast<size_t>(k - 1)] : Value());
      loop.set("nextitem", k + 1 < len ? items[static_cast<size_t>(k + 1)] : Value());
      frame["loop"] = Value::make_dict(std::move(loop));
      if (exec(*n.kids[1], out) == Flow::break_) break;
    }
    frames_.pop_back();
    return Flow::normal;
  }

  // A macro sees the template's globals and its own parameters.
  Value macro(const Node& n) {
    return Value::function([this, &n](const List& args, const KwArgs& kwargs) {
      if (args.size() > n.names.size()) error(n, "macro '" + n.name + "' takes " + std::to_string(n.names.size()) + " arguments");
      std::unordered_map<std::string, Value> frame;
      for (size_t k = 0; k < n.names.size(); ++k) {
        if (k < args.size()) frame[n.names[k]] = args[k];
        else if (n.kids[k + 1]) frame[n.names[k]] = eval(*n.kids[k + 1]);
      }
      for (const auto& [name, v] : kwargs) {
        if (std::find(n.names.begin(), n.names.end(), name) == n.names.end()) {
          error(n, "macro '" + n.name + "' has no parameter '" + name + "'");
        }
        frame[name] = v;
      }
      if (++macro_depth_ > kMaxMacroDepth) error(n, "macro '" + n.name + "' recursion deeper than " + std::to_string(kMaxMacroDepth));
      struct Leave {
        int& d;
        ~Leave() { --d; }
      } leave{macro_depth_};
      auto saved = std::move(frames_);
      frames_.clear();
      frames_.push_back(saved.front());
      frames_.push_back(std::move(frame));
      std::string out;
      exec(*n.kids[0], out);
      frames_ = std::move(saved);
      return Value::string(out);
    });
  }

  void install_builtins() {
    auto& g = frames_.front();
    const auto make_dict = [](const List& args, const KwArgs& kwargs) {
      Value d = Value::make_dict();
      for (const auto& a : args) {
        if (!a.is_dict()) fail("dict() and namespace() take keyword arguments or a dict");
        for (const auto& [k, v] : a.dict->items) d.dict->set(k, v);
      }
      for (const auto& [k, v] : kwargs) d.dict->set(k, v);
      return d;
    };
    g["dict"] = Value::function(make_dict);
    g["namespace"] = Value::function([make_dict](const List& args, const KwArgs& kwargs) {
      Value ns = make_dict(args, kwargs);
      ns.is_namespace = true;
      return ns;
    });
    g["strftime_now"] = Value::function([](const List& args, const KwArgs&) {  // as transformers provides
      if (args.size() != 1 || !args[0].is_string()) fail("strftime_now() takes one format string");
      const std::time_t now = std::time(nullptr);
      std::tm local{};
      localtime_r(&now, &local);
      char buf[256];
      const size_t n = std::strftime(buf, sizeof(buf), args[0].s.c_str(), &local);
      return Value::string(std::string(buf, n));
    });
    g["raise_exception"] = Value::function([](const List& args, const KwArgs&) -> Value {
      fail("raise_exception: ", args.empty() ? std::string() : args[0].str());
    });
    g["range"] = Value::function([](const List& args, const KwArgs&) {
      int64_t start = 0, stop = 0, step = 1;
      for (const auto& a : args) {
        if (a.kind != Value::Kind::integer) fail("range() takes integers");
      }
      if (args.size() == 1) stop = args[0].i;
      else if (args.size() >= 2) start = args[0].i, stop = args[1].i;
      if (args.size() == 3) step = args[2].i;
      if (step == 0 || args.empty() || args.size() > 3) fail("range() takes 1 to 3 arguments, step != 0");
      List out;
      for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) out.push_back(Value::integer(k));
      return Value::make_list(std::move(out));
    });
  }

  // ---- expressions ----

  struct Args {
    List pos;
    KwArgs kw;
    // Positional argument k, else keyword argument `kwname`, else `fallback` (returned by
    // value: callers pass temporaries as fallback).
    Value at(size_t k, const char* kwname, const Value& fallback) const {
      if (k < pos.size()) return pos[k];
      for (const auto& [name, v] : kw) {
        if (name == kwname) return v;
      }
      return fallback;
    }
  };

  // Arguments of a call/filter/test node from kids[first..].
  Args args(const Node& n, size_t first) {
    Args a;
    const size_t nkw = n.names.size(), total = n.kids.size() - first;
    for (size_t k = 0; k < total; ++k) {
      Value v = eval(*n.kids[first + k]);
      if (k + nkw < total) a.pos.push_back(std::move(v));
      else a.kw.emplace_back(n.names[k + nkw - total], std::move(v));
    }
    return a;
  }

  Value eval(const Node& n) {
    try {
      return eval_inner(n);
    } catch (const Error& e) {
      const std::string m = e.what();
      if (m.starts_with(what_)) throw;  // already has a position
      error(n, m);
    }
  }

  Value eval_inner(const Node& n) {
    switch (n.kind) {
      case Kind::literal: return n.value;
      case Kind::name: return lookup(n.name);
      case Kind::list: {
        List l;
        for (const auto& k : n.kids) l.push_back(eval(*k));
        Value v = Value::make_list(std::move(l));
        v.is_tuple = n.name == "tuple";
        return v;
      }
      case Kind::dict: {
        Dict d;
        for (size_t k = 0; k + 1 < n.kids.size(); k += 2) {
          const Value key = eval(*n.kids[k]);
          if (!key.is_string()) error(*n.kids[k], "dict keys must be strings");
          d.set(key.s, eval(*n.kids[k + 1]));
        }
        return Value::make_dict(std::move(d));
      }
      case Kind::getattr: {
        const Value obj = eval(*n.kids[0]);
        if (obj.is_undefined()) error(n, "cannot read attribute '" + n.name + "' of an undefined value");
        return item(obj, Value::string(n.name), n);
      }
      case Kind::getitem: {
        const Value obj = eval(*n.kids[0]);
        if (obj.is_undefined()) error(n, "cannot index an undefined value");
        return item(obj, eval(*n.kids[1]), n);
      }
      case Kind::slice: return slice(n);
      case Kind::call: return call(n);
      case Kind::filter: return filter(n);
      case Kind::test: {
        const bool r = test(n);
        return Value::boolean(n.negated ? !r : r);
      }
      case Kind::unary: {
        const Value v = eval(*n.kids[0]);
        if (n.name == "not") return Value::boolean(!v.truthy());
        if (!v.is_numeric()) error(n, "bad operand type for unary " + n.name + ": " + v.type_name());
        if (n.name == "+") return v;
        return v.kind == Value::Kind::number ? Value::number(-v.d) : Value::integer(-(v.kind == Value::Kind::integer ? v.i : v.b));
      }
      case Kind::binary: return binary(n);
      case Kind::cond: {
        if (eval(*n.kids[1]).truthy()) return eval(*n.kids[0]);
        return n.kids.size() > 2 ? eval(*n.kids[2]) : Value();
      }
      default: error(n, "not an expression");
    }
  }

  // obj.name / obj[key]: a missing key or index is undefined, as in Jinja.
  Value item(const Value& obj, const Value& key, const Node& n) {
    if (obj.is_dict()) {
      if (!key.is_string()) return Value();
      const Value* v = obj.dict->find(key.s);
      return v ? *v : Value();
    }
    if ((obj.is_list() || obj.is_string()) && key.kind == Value::Kind::integer) {
      const auto cps = obj.is_string() ? code_points(obj.s) : std::vector<std::string>{};
      const auto size = static_cast<int64_t>(obj.is_list() ? obj.list->size() : cps.size());
      const int64_t k = key.i < 0 ? key.i + size : key.i;
      if (k < 0 || k >= size) return Value();
      return obj.is_list() ? (*obj.list)[static_cast<size_t>(k)] : Value::string(cps[static_cast<size_t>(k)]);
    }
    if (obj.is_none() || obj.is_list() || obj.is_string() || obj.is_numeric()) return Value();
    error(n, "cannot index a " + obj.type_name());
  }

  Value slice(const Node& n) {
    const Value obj = eval(*n.kids[0]);
    if (!obj.is_list() && !obj.is_string()) error(n, "cannot slice a " + obj.type_name());
    const auto cps = obj.is_string() ? code_points(obj.s) : std::vector<std::string>{};
    const auto size = static_cast<int64_t>(obj.is_list() ? obj.list->size() : cps.size());
    const auto bound = [&](int k, int64_t fallback) {
      if (!n.kids[static_cast<size_t>(k)]) return fallback;
      const Value v = eval(*n.kids[static_cast<size_t>(k)]);
      if (v.is_none()) return fallback;
      if (v.kind != Value::Kind::integer) error(n, "slice indices must be integers");
      return v.i;
    };
    const int64_t step = bound(3, 1);
    if (step == 0) error(n, "slice step cannot be zero");
    // Python's slice.indices().
    const auto clamp = [&](int64_t v) {
      if (v < 0) v += size;
      return step > 0 ? std::clamp<int64_t>(v, 0, size) : std::clamp<int64_t>(v, -1, size - 1);
    };
    const int64_t start = n.kids[1] ? clamp(bound(1, 0)) : (step > 0 ? 0 : size - 1);
    const int64_t stop = n.kids[2] ? clamp(bound(2, 0)) : (step > 0 ? size : -1);
    List l;
    std::string s;
    for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
      if (obj.is_list()) l.push_back((*obj.list)[static_cast<size_t>(k)]);
      else s += cps[static_cast<size_t>(k)];
    }
    return obj.is_list() ? Value::make_list(std::move(l)) : Value::string(std::move(s));
  }

  Value call(const Node& n) {
    const Node& callee = *n.kids[0];
    if (callee.kind == Kind::getattr) {  // method call on a str / dict / list
      const Value obj = eval(*callee.kids[0]);
      if (obj.is_string() || (obj.is_dict() && !obj.is_namespace && !obj.dict->find(callee.name))) {
        return method(obj, callee.name, args(n, 1), n);
      }
    }
    const Value fn = eval(callee);
    if (fn.kind != Value::Kind::function) {
      error(n, (callee.kind == Kind::name ? "'" + callee.name + "'" : std::string("value")) + " is not callable (" +
                   fn.type_name() + ")");
    }
    Args a = args(n, 1);
    return (*fn.fn)(a.pos, a.kw);
  }

  Value method(const Value& obj, const std::string& name, const Args& a, const Node& n) {
    if (obj.is_dict()) {
      const auto& items = obj.dict->items;
      if (name == "items" || name == "keys" || name == "values") {
        List l;
        for (const auto& [k, v] : items) {
          if (name == "items") {
            l.push_back(Value::make_list({Value::string(k), v}));
            l.back().is_tuple = true;
          } else {
            l.push_back(name == "keys" ? Value::string(k) : v);
          }
        }
        return Value::make_list(std::move(l));
      }
      if (name == "get") {
        const Value& key = a.at(0, "key", Value());
        const Value* v = key.is_string() ? obj.dict->find(key.s) : nullptr;
        return v ? *v : a.at(1, "default", Value::none());
      }
      error(n, "dict has no method '" + name + "'");
    }
    const std::string& s = obj.s;
    const auto str_arg = [&](size_t k, const char* kw) {
      const Value& v = a.at(k, kw, Value());
      if (!v.is_string()) error(n, "str." + name + "() needs a string argument");
      return v.s;
    };
    if (name == "startswith" || name == "endswith") {
      const Value& p = a.at(0, "prefix", Value());
      List options = p.is_list() ? *p.list : List{p};
      for (const auto& o : options) {
        if (!o.is_string()) error(n, "str." + name + "() needs string arguments");
        if (name == "startswith" ? s.starts_with(o.s) : s.ends_with(o.s)) return Value::boolean(true);
      }
      return Value::boolean(false);
    }
    if (name == "strip") return Value::string(strip(s, a.at(0, "chars", Value()), true, true));
    if (name == "lstrip") return Value::string(strip(s, a.at(0, "chars", Value()), true, false));
    if (name == "rstrip") return Value::string(strip(s, a.at(0, "chars", Value()), false, true));
    if (name == "split") {
      const Value& m = a.at(1, "maxsplit", Value::integer(-1));
      return split(s, a.at(0, "sep", Value()), m.kind == Value::Kind::integer ? m.i : -1);
    }
    if (name == "upper") return Value::string(case_map(s, 1));
    if (name == "lower") return Value::string(case_map(s, 0));
    if (name == "capitalize") return Value::string(case_map(s, 2));
    if (name == "title") return Value::string(case_map(s, 3));
    if (name == "replace") {
      const Value& c = a.at(2, "count", Value::integer(-1));
      return Value::string(replace_all(s, str_arg(0, "old"), str_arg(1, "new"), c.kind == Value::Kind::integer ? c.i : -1));
    }
    if (name == "find") {
      const size_t p = s.find(str_arg(0, "sub"));
      if (p == std::string::npos) return Value::integer(-1);
      return Value::integer(static_cast<int64_t>(code_points(s.substr(0, p)).size()));
    }
    if (name == "count") {
      const std::string sub = str_arg(0, "sub");
      int64_t c = 0;
      for (size_t p = 0; !sub.empty() && (p = s.find(sub, p)) != std::string::npos; p += sub.size()) ++c;
      return Value::integer(c);
    }
    if (name == "join") {
      const Value& l = a.at(0, "iterable", Value());
      if (!l.is_list()) error(n, "str.join() needs a list");
      std::string out;
      for (size_t k = 0; k < l.list->size(); ++k) out += (k ? s : "") + (*l.list)[k].str();
      return Value::string(out);
    }
    error(n, "str has no method '" + name + "'");
  }

  static Value item_or_undefined(const Value& dict, const std::string& key) {
    const Value* v = dict.dict->find(key);
    return v ? *v : Value();
  }

  Value filter(const Node& n) {
    const Value v = eval(*n.kids[0]);
    return apply_filter(n.name, v, args(n, 1), n);
  }

  Value apply_filter(const std::string& f, const Value& v, const Args& a, const Node& n) {
    if (f == "length" || f == "count") {
      if (v.is_list()) return Value::integer(static_cast<int64_t>(v.list->size()));
      if (v.is_dict()) return Value::integer(static_cast<int64_t>(v.dict->items.size()));
      if (v.is_string()) return Value::integer(static_cast<int64_t>(code_points(v.s).size()));
      if (v.is_undefined()) return Value::integer(0);
      error(n, "object of type " + v.type_name() + " has no length");
    }
    if (f == "tojson") {
      const Value& indent = a.at(0, "indent", Value());
      return Value::string(to_json(v, indent.kind == Value::Kind::integer ? static_cast<int>(indent.i) : -1));
    }
    if (f == "safe") return v;
    if (f == "string") return Value::string(v.str());
    if (f == "trim") return Value::string(strip(v.str(), a.at(0, "chars", Value()), true, true));
    if (f == "upper") return Value::string(case_map(v.str(), 1));
    if (f == "lower") return Value::string(case_map(v.str(), 0));
    if (f == "capitalize") return Value::string(case_map(v.str(), 2));
    if (f == "title") return Value::string(case_map(v.str(), 3));
    if (f == "replace") {
      return Value::string(replace_all(v.str(), a.at(0, "old", Value()).str(), a.at(1, "new", Value()).str()));
    }
    if (f == "default" || f == "d") {
      const bool boolean = a.at(1, "boolean", Value::boolean(false)).truthy();
      if (v.is_undefined() || (boolean && !v.truthy())) return a.at(0, "default_value", Value::string(""));
      return v;
    }
    if (f == "join") {
      if (!v.is_list()) error(n, "join needs a list, got " + v.type_name());
      const std::string sep = a.at(0, "d", Value::string("")).str();
      std::string out;
      for (size_t k = 0; k < v.list->size(); ++k) out += (k ? sep : "") + (*v.list)[k].str();
      return Value::string(out);
    }
    if (f == "first" || f == "last") {
      if (!v.is_list()) error(n, f + " needs a list, got " + v.type_name());
      if (v.list->empty()) return Value();
      return f == "first" ? v.list->front() : v.list->back();
    }
    if (f == "list") {
      if (v.is_list()) return v;
      if (v.is_string()) {
        List l;
        for (auto& c : code_points(v.s)) l.push_back(Value::string(std::move(c)));
        return Value::make_list(std::move(l));
      }
      if (v.is_dict()) return method(v, "keys", {}, n);
      error(n, "cannot make a list of a " + v.type_name());
    }
    if (f == "items") {
      if (!v.is_dict()) error(n, "items needs a dict, got " + v.type_name());
      return method(v, "items", {}, n);
    }
    if (f == "int") {
      if (v.kind == Value::Kind::number) return Value::integer(static_cast<int64_t>(v.d));
      if (v.is_numeric()) return Value::integer(v.kind == Value::Kind::integer ? v.i : v.b);
      const std::string t = strip(v.str(), Value(), true, true);
      int64_t x = 0;
      const auto r = std::from_chars(t.data(), t.data() + t.size(), x);
      if (t.empty() || r.ec != std::errc() || r.ptr != t.data() + t.size()) return a.at(0, "default", Value::integer(0));
      return Value::integer(x);
    }
    if (f == "float") {
      if (v.is_numeric()) return Value::number(v.as_double());
      const std::string t = strip(v.str(), Value(), true, true);
      double x = 0;
      const auto r = std::from_chars(t.data(), t.data() + t.size(), x);
      if (t.empty() || r.ec != std::errc() || r.ptr != t.data() + t.size()) return a.at(0, "default", Value::number(0));
      return Value::number(x);
    }
    if (f == "abs") {
      if (v.kind == Value::Kind::integer) return Value::integer(v.i < 0 ? -v.i : v.i);
      if (v.is_numeric()) return Value::number(std::fabs(v.as_double()));
      error(n, "abs needs a number");
    }
    if (f == "selectattr" || f == "rejectattr" || f == "select" || f == "reject" || f == "map") {
      if (!v.is_list()) error(n, f + " needs a list, got " + v.type_name());
      const bool by_attr = f == "selectattr" || f == "rejectattr";
      List out;
      for (const Value& item : *v.list) {
        if (f == "map") {  // map(attribute='x') or map('filter', args...)
          const Value& attr = a.at(a.pos.size(), "attribute", Value());  // keyword only
          if (attr.is_string()) {
            out.push_back(item.is_dict() ? item_or_undefined(item, attr.s) : Value());
            continue;
          }
          if (a.pos.empty() || !a.pos[0].is_string()) error(n, "map needs attribute= or a filter name");
          Args rest{List(a.pos.begin() + 1, a.pos.end()), a.kw};
          out.push_back(apply_filter(a.pos[0].s, item, rest, n));
          continue;
        }
        Value subject = item;
        size_t first = 0;
        if (by_attr) {
          if (a.pos.empty() || !a.pos[0].is_string()) error(n, f + " needs an attribute name");
          subject = item.is_dict() ? item_or_undefined(item, a.pos[0].s) : Value();
          first = 1;
        }
        bool keep = subject.truthy();
        if (a.pos.size() > first) {
          if (!a.pos[first].is_string()) error(n, f + " needs a test name");
          keep = apply_test(a.pos[first].s, subject, Args{List(a.pos.begin() + static_cast<std::ptrdiff_t>(first) + 1, a.pos.end()), {}}, n);
        }
        if (keep == (f == "selectattr" || f == "select")) out.push_back(item);
      }
      return Value::make_list(std::move(out));
    }
    error(n, "unknown filter '" + f + "'");
  }

  bool test(const Node& n) {
    const Value v = eval(*n.kids[0]);
    return apply_test(n.name, v, args(n, 1), n);
  }

  bool apply_test(const std::string& t, const Value& v, const Args& a, const Node& n) {
    if (t == "defined") return !v.is_undefined();
    if (t == "undefined") return v.is_undefined();
    if (t == "none") return v.is_none();
    if (t == "string") return v.is_string();
    if (t == "boolean") return v.kind == Value::Kind::boolean;
    if (t == "true") return v.kind == Value::Kind::boolean && v.b;
    if (t == "false") return v.kind == Value::Kind::boolean && !v.b;
    if (t == "integer") return v.kind == Value::Kind::integer;
    if (t == "float") return v.kind == Value::Kind::number;
    if (t == "number") return v.is_numeric();
    if (t == "mapping") return v.is_dict() && !v.is_namespace;
    if (t == "sequence" || t == "iterable") return v.is_list() || v.is_string() || (v.is_dict() && !v.is_namespace);
    if (t == "callable") return v.kind == Value::Kind::function;
    if (t == "odd" || t == "even" || t == "divisibleby") {
      if (v.kind != Value::Kind::integer) error(n, "test '" + t + "' needs an integer");
      if (t == "divisibleby") {
        const Value& d = a.at(0, "num", Value());
        if (d.kind != Value::Kind::integer || d.i == 0) error(n, "divisibleby needs a non-zero integer");
        return v.i % d.i == 0;
      }
      return (v.i % 2 != 0) == (t == "odd");
    }
    if (t == "eq" || t == "equalto" || t == "sameas") return equal(v, a.at(0, "other", Value()));
    if (t == "ne") return !equal(v, a.at(0, "other", Value()));
    error(n, "unknown test '" + t + "'");
  }

  Value binary(const Node& n) {
    const std::string& op = n.name;
    const Value a = eval(*n.kids[0]);
    if (op == "and") return a.truthy() ? eval(*n.kids[1]) : a;
    if (op == "or") return a.truthy() ? a : eval(*n.kids[1]);
    const Value b = eval(*n.kids[1]);
    if (op == "==") return Value::boolean(equal(a, b));
    if (op == "!=") return Value::boolean(!equal(a, b));
    if (op == "~") return Value::string(a.str() + b.str());
    if (op == "in" || op == "not in") {
      bool r = false;
      if (b.is_string()) {
        if (!a.is_string()) error(n, "'in <string>' needs a string on the left, got " + a.type_name());
        r = b.s.find(a.s) != std::string::npos;
      } else if (b.is_list()) {
        r = std::any_of(b.list->begin(), b.list->end(), [&](const Value& x) { return equal(x, a); });
      } else if (b.is_dict()) {
        r = a.is_string() && b.dict->find(a.s);
      } else {
        error(n, "argument of type " + b.type_name() + " is not iterable");
      }
      return Value::boolean(op == "in" ? r : !r);
    }
    const auto bad = [&]() -> Value {
      error(n, "unsupported operand types for " + op + ": " + a.type_name() + " and " + b.type_name());
    };
    if (op == "<" || op == ">" || op == "<=" || op == ">=") {
      int c;
      if (a.is_numeric() && b.is_numeric()) c = a.as_double() < b.as_double() ? -1 : a.as_double() > b.as_double();
      else if (a.is_string() && b.is_string()) c = a.s.compare(b.s) < 0 ? -1 : a.s.compare(b.s) > 0;
      else return bad();
      return Value::boolean(op == "<" ? c < 0 : op == ">" ? c > 0 : op == "<=" ? c <= 0 : c >= 0);
    }
    if (op == "+" && a.is_string() && b.is_string()) return Value::string(a.s + b.s);
    if (op == "+" && a.is_list() && b.is_list()) {
      List l = *a.list;
      l.insert(l.end(), b.list->begin(), b.list->end());
      return Value::make_list(std::move(l));
    }
    if (op == "*" && a.is_string() && b.kind == Value::Kind::integer) {
      std::string out;
      for (int64_t k = 0; k < b.i; ++k) out += a.s;
      return Value::string(out);
    }
    if (!a.is_numeric() || !b.is_numeric()) return bad();
    const bool ints = a.kind != Value::Kind::number && b.kind != Value::Kind::number;
    const int64_t x = a.kind == Value::Kind::integer ? a.i : a.b, y = b.kind == Value::Kind::integer ? b.i : b.b;
    const double p = a.as_double(), q = b.as_double();
    if (op == "+") return ints ? Value::integer(x + y) : Value::number(p + q);
    if (op == "-") return ints ? Value::integer(x - y) : Value::number(p - q);
    if (op == "*") return ints ? Value::integer(x * y) : Value::number(p * q);
    if ((op == "/" || op == "//" || op == "%") && q == 0) error(n, "division by zero");
    if (op == "/") return Value::number(p / q);
    if (op == "//") {
      if (ints) return Value::integer(x / y - ((x % y != 0) && ((x < 0) != (y < 0))));
      return Value::number(std::floor(p / q));
    }
    if (op == "%") {
      if (ints) return Value::integer(((x % y) + y) % y);
      return Value::number(p - q * std::floor(p / q));
    }
    if (op == "**") return ints && y >= 0 ? Value::integer(static_cast<int64_t>(std::pow(p, q))) : Value::number(std::pow(p, q));
    return bad();
  }

  static constexpr int kMaxMacroDepth = 100;
  std::string what_;
  std::vector<std::unordered_map<std::string, Value>> frames_;
  int macro_depth_ = 0;
};

}  // namespace

Template::Template(const std::string& source, const std::string& what) : what_(what), root_(parse(source, what)) {}

std::string Template::render(const Value& variables) const {
  MXMOE_CHECK(variables.is_dict(), what_, ": template variables must be a dict");
  Renderer r(what_, variables);
  std::string out;
  r.exec(*root_, out);
  return out;
}

}  // namespace mxmoe::jinja
