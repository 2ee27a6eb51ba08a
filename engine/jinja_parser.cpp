#include "engine/jinja_parser.h"

#include <cctype>
#include <charconv>

#include "engine/error.h"
#include "engine/utf8.h"

namespace mxmoe::jinja {
namespace {

// ---- Template-level lexing: text and tags, with whitespace control ----

struct Segment {
  enum class Kind { text, output, statement } kind;
  std::string body;  // text, or the tag's inside (without delimiters and '-'/'+')
  size_t offset;     // where the body starts in the source
};

bool is_blank(char c) { return c == ' ' || c == '\t'; }
bool is_space(char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }

class Source {
 public:
  Source(const std::string& src, const std::string& what) : src_(src), what_(what) {}

  [[noreturn]] void error(size_t offset, const std::string& message) const {
    Node at;
    position(offset, at);
    fail(what_, ": line ", at.line, ", column ", at.col, ": ", message);
  }
  // 1-based line and column (in characters) of a byte offset.
  void position(size_t offset, Node& n) const {
    n.line = 1;
    n.col = 1;
    for (size_t k = 0; k < offset && k < src_.size(); ++k) {
      if (src_[k] == '\n') {
        ++n.line;
        n.col = 1;
      } else if ((static_cast<unsigned char>(src_[k]) & 0xC0) != 0x80) {
        ++n.col;
      }
    }
  }
  const std::string& text() const { return src_; }

 private:
  const std::string& src_;
  std::string what_;
};

// trim_blocks and lstrip_blocks are on, as in transformers' chat-template environment.
std::vector<Segment> split_segments(const Source& source) {
  const std::string& s = source.text();
  std::vector<Segment> out;
  bool strip_next = false, trim_newline = false;
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t open = s.find('{', pos);
    while (open != std::string::npos && open + 1 < s.size() && s[open + 1] != '{' && s[open + 1] != '%' &&
           s[open + 1] != '#') {
      open = s.find('{', open + 1);
    }
    if (open + 1 >= s.size()) open = std::string::npos;
    std::string text = s.substr(pos, open == std::string::npos ? std::string::npos : open - pos);
    size_t text_offset = pos;
    if (strip_next) {
      size_t k = 0;
      while (k < text.size() && is_space(text[k])) ++k;
      text.erase(0, k);
      text_offset += k;
    } else if (trim_newline) {
      if (text.starts_with("\r\n")) text.erase(0, 2), text_offset += 2;
      else if (text.starts_with("\n")) text.erase(0, 1), text_offset += 1;
    }
    strip_next = trim_newline = false;
    if (open == std::string::npos) {
      if (!text.empty()) out.push_back({Segment::Kind::text, text, text_offset});
      break;
    }
    const char type = s[open + 1];
    const char* close = type == '{' ? "}}" : type == '%' ? "%}" : "#}";
    size_t body = open + 2;
    const char mod = body < s.size() ? s[body] : '\0';
    if (mod == '-') {
      while (!text.empty() && is_space(text.back())) text.pop_back();
      ++body;
    } else if (mod == '+') {
      ++body;
    } else if (type != '{') {  // lstrip_blocks: blanks from the line start up to a block tag
      size_t k = text.size();
      while (k > 0 && is_blank(text[k - 1])) --k;
      if (k == 0 ? (text_offset == 0 || s[text_offset - 1] == '\n') : text[k - 1] == '\n') {
        text.resize(k);
      }
    }
    if (!text.empty()) out.push_back({Segment::Kind::text, text, text_offset});
    const size_t end = s.find(close, body);
    if (end == std::string::npos) source.error(open, std::string("unclosed tag, expected '") + close + "'");
    size_t body_end = end;
    if (body_end > body && s[body_end - 1] == '-') {
      strip_next = true;
      --body_end;
    } else if (body_end > body && s[body_end - 1] == '+') {
      --body_end;
    } else if (type != '{') {
      trim_newline = true;
    }
    if (type == '{') out.push_back({Segment::Kind::output, s.substr(body, body_end - body), body});
    if (type == '%') out.push_back({Segment::Kind::statement, s.substr(body, body_end - body), body});
    pos = end + 2;
  }
  return out;
}

// ---- Expression lexing ----

struct Token {
  enum class Kind { name, string, integer, number, op, end } kind;
  std::string text;
  size_t offset;
};

std::vector<Token> lex(const Source& source, const std::string& body, size_t base) {
  static const char* kOps[] = {"//", "**", "==", "!=", "<=", ">=", "(", ")", "[", "]", "{", "}", ".", ",", ":",
                               "|", "~", "+", "-", "*", "/", "%", "<", ">", "="};
  std::vector<Token> out;
  size_t i = 0;
  while (i < body.size()) {
    const char c = body[i];
    if (is_space(c)) {
      ++i;
      continue;
    }
    const size_t at = base + i;
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t j = i;
      while (j < body.size() && (std::isalnum(static_cast<unsigned char>(body[j])) || body[j] == '_')) ++j;
      out.push_back({Token::Kind::name, body.substr(i, j - i), at});
      i = j;
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t j = i;
      while (j < body.size() && (std::isdigit(static_cast<unsigned char>(body[j])) || body[j] == '_')) ++j;
      bool is_float = false;
      if (j + 1 < body.size() && body[j] == '.' && std::isdigit(static_cast<unsigned char>(body[j + 1]))) {
        is_float = true;
        ++j;
        while (j < body.size() && std::isdigit(static_cast<unsigned char>(body[j]))) ++j;
      }
      std::string digits;
      for (size_t k = i; k < j; ++k) {
        if (body[k] != '_') digits += body[k];
      }
      out.push_back({is_float ? Token::Kind::number : Token::Kind::integer, digits, at});
      i = j;
    } else if (c == '\'' || c == '"') {
      std::string v;
      size_t j = i + 1;
      for (; j < body.size() && body[j] != c; ++j) {
        if (body[j] != '\\' || j + 1 >= body.size()) {
          v += body[j];
          continue;
        }
        const char e = body[++j];
        switch (e) {
          case 'n': v += '\n'; break;
          case 't': v += '\t'; break;
          case 'r': v += '\r'; break;
          case '0': v += '\0'; break;
          case '\\': case '\'': case '"': v += e; break;
          case 'u': {
            unsigned cp = 0;
            const char* first = body.data() + j + 1;
            const auto r = j + 4 < body.size() ? std::from_chars(first, first + 4, cp, 16) : std::from_chars_result{};
            if (r.ptr == first + 4 && (cp < 0xD800 || cp > 0xDFFF)) {
              utf8::append(v, static_cast<char32_t>(cp));
              j += 4;
              break;
            }
            source.error(base + j - 1, "bad \\u escape in string literal");
          }
          default: v += '\\', v += e;
        }
      }
      if (j >= body.size()) source.error(at, "unterminated string literal");
      out.push_back({Token::Kind::string, v, at});
      i = j + 1;
    } else {
      bool found = false;
      for (const char* op : kOps) {
        const size_t n = std::char_traits<char>::length(op);
        if (body.compare(i, n, op) == 0) {
          out.push_back({Token::Kind::op, op, at});
          i += n;
          found = true;
          break;
        }
      }
      if (!found) source.error(at, std::string("unexpected character '") + c + "'");
    }
  }
  out.push_back({Token::Kind::end, "", base + body.size()});
  return out;
}

// ---- Expression parsing (precedence as in jinja2's parser) ----

class ExprParser {
 public:
  ExprParser(const Source& source, std::vector<Token> tokens) : src_(source), t_(std::move(tokens)) {}

  // with_cond=false: no `a if c else b` at the top (a for loop's iterable, before its filter).
  NodePtr expression(bool with_cond = true) {
    NodePtr e = or_expr();
    if (with_cond && is_name("if")) {  // a if cond else b
      const size_t at = next().offset;
      auto n = node(Node::Kind::cond, at);
      n->kids.push_back(std::move(e));
      n->kids.push_back(or_expr());
      if (is_name("else")) {
        next();
        n->kids.push_back(expression());
      }
      return n;
    }
    return e;
  }

  // Comma-separated expressions without brackets form a tuple (a list here).
  NodePtr tuple_or_expression(bool with_cond = true) {
    const size_t at = cur().offset;
    NodePtr e = expression(with_cond);
    if (!is_op(",")) return e;
    auto n = node(Node::Kind::list, at);
    n->name = "tuple";
    n->kids.push_back(std::move(e));
    while (is_op(",")) {
      next();
      if (at_end()) break;
      n->kids.push_back(expression(with_cond));
    }
    return n;
  }

  bool at_end() const { return cur().kind == Token::Kind::end; }
  bool is_name(const char* s) const { return cur().kind == Token::Kind::name && cur().text == s; }
  bool is_op(const char* s) const { return cur().kind == Token::Kind::op && cur().text == s; }
  const Token& cur() const { return t_[pos_]; }
  const Token& next() { return t_[pos_ < t_.size() - 1 ? pos_++ : pos_]; }
  [[noreturn]] void error(const std::string& m) const {
    src_.error(cur().offset, m + (at_end() ? " (at end of tag)" : " near '" + cur().text + "'"));
  }
  void expect_op(const char* s) {
    if (!is_op(s)) error(std::string("expected '") + s + "'");
    next();
  }
  std::string expect_name() {
    if (cur().kind != Token::Kind::name) error("expected a name");
    return next().text;
  }
  void expect_end() {
    if (!at_end()) error("unexpected token");
  }
  NodePtr node(Node::Kind k, size_t offset) const {
    auto n = std::make_unique<Node>();
    n->kind = k;
    src_.position(offset, *n);
    return n;
  }
  // Bounds the recursion of nested expressions (a deep template is an error, not a crash).
  struct Nesting {
    int* depth;
    ~Nesting() { --*depth; }
  };
  Nesting nest() {
    if (++depth_ > kMaxDepth) error("expression nested too deeply");
    return Nesting{&depth_};
  }

 private:
  NodePtr binary(const std::string& op, NodePtr a, NodePtr b, size_t at) {
    auto n = node(Node::Kind::binary, at);
    n->name = op;
    n->kids.push_back(std::move(a));
    n->kids.push_back(std::move(b));
    return n;
  }
  NodePtr or_expr() {
    NodePtr a = and_expr();
    while (is_name("or")) {
      const size_t at = next().offset;
      a = binary("or", std::move(a), and_expr(), at);
    }
    return a;
  }
  NodePtr and_expr() {
    NodePtr a = not_expr();
    while (is_name("and")) {
      const size_t at = next().offset;
      a = binary("and", std::move(a), not_expr(), at);
    }
    return a;
  }
  NodePtr not_expr() {
    const auto guard = nest();
    if (is_name("not")) {
      auto n = node(Node::Kind::unary, next().offset);
      n->name = "not";
      n->kids.push_back(not_expr());
      return n;
    }
    return compare();
  }
  NodePtr compare() {
    NodePtr a = math1();
    for (;;) {
      const size_t at = cur().offset;
      std::string op;
      if (cur().kind == Token::Kind::op &&
          (cur().text == "==" || cur().text == "!=" || cur().text == "<" || cur().text == ">" ||
           cur().text == "<=" || cur().text == ">=")) {
        op = next().text;
      } else if (is_name("in")) {
        next();
        op = "in";
      } else if (is_name("not") && t_[pos_ + 1].kind == Token::Kind::name && t_[pos_ + 1].text == "in") {
        next();
        next();
        op = "not in";
      } else {
        return a;
      }
      a = binary(op, std::move(a), math1(), at);
    }
  }
  NodePtr math1() {
    NodePtr a = concat();
    while (is_op("+") || is_op("-")) {
      const Token& op = next();
      a = binary(op.text, std::move(a), concat(), op.offset);
    }
    return a;
  }
  NodePtr concat() {
    NodePtr a = math2();
    while (is_op("~")) {
      const size_t at = next().offset;
      a = binary("~", std::move(a), math2(), at);
    }
    return a;
  }
  NodePtr math2() {
    NodePtr a = pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token& op = next();
      a = binary(op.text, std::move(a), pow(), op.offset);
    }
    return a;
  }
  NodePtr pow() {
    NodePtr a = unary();
    while (is_op("**")) {
      const size_t at = next().offset;
      a = binary("**", std::move(a), unary(), at);
    }
    return a;
  }
  NodePtr unary(bool with_filter = true) {
    const auto guard = nest();  // every bracket and sign passes here
    NodePtr n;
    if (is_op("-") || is_op("+")) {
      const Token& op = next();
      n = node(Node::Kind::unary, op.offset);
      n->name = op.text;
      n->kids.push_back(unary(false));
    } else {
      n = postfix(primary());
    }
    return with_filter ? filters(std::move(n)) : std::move(n);
  }
  NodePtr primary() {
    const Token& t = cur();
    const size_t at = t.offset;
    switch (t.kind) {
      case Token::Kind::string: {
        auto n = node(Node::Kind::literal, at);
        std::string s = next().text;
        while (cur().kind == Token::Kind::string) s += next().text;  // adjacent literals concatenate
        n->value = Value::string(std::move(s));
        return n;
      }
      case Token::Kind::integer: {
        auto n = node(Node::Kind::literal, at);
        const std::string& digits = next().text;
        int64_t v = 0;
        if (std::from_chars(digits.data(), digits.data() + digits.size(), v).ec != std::errc()) {
          src_.error(at, "integer literal out of range");
        }
        n->value = Value::integer(v);
        return n;
      }
      case Token::Kind::number: {
        auto n = node(Node::Kind::literal, at);
        const std::string& digits = next().text;
        double v = 0;
        std::from_chars(digits.data(), digits.data() + digits.size(), v);
        n->value = Value::number(v);
        return n;
      }
      case Token::Kind::name: {
        const std::string name = next().text;
        auto n = node(Node::Kind::literal, at);
        if (name == "true" || name == "True") n->value = Value::boolean(true);
        else if (name == "false" || name == "False") n->value = Value::boolean(false);
        else if (name == "none" || name == "None") n->value = Value::none();
        else n->kind = Node::Kind::name, n->name = name;
        return n;
      }
      case Token::Kind::op:
        if (t.text == "(") {
          next();
          if (is_op(")")) {  // empty tuple
            next();
            auto n = node(Node::Kind::list, at);
            n->name = "tuple";
            return n;
          }
          NodePtr e = tuple_or_expression();
          expect_op(")");
          return e;
        }
        if (t.text == "[") {
          next();
          auto n = node(Node::Kind::list, at);
          while (!is_op("]")) {
            n->kids.push_back(expression());
            if (!is_op(",")) break;
            next();
          }
          expect_op("]");
          return n;
        }
        if (t.text == "{") {
          next();
          auto n = node(Node::Kind::dict, at);
          while (!is_op("}")) {
            n->kids.push_back(expression());
            expect_op(":");
            n->kids.push_back(expression());
            if (!is_op(",")) break;
            next();
          }
          expect_op("}");
          return n;
        }
        break;
      case Token::Kind::end: break;
    }
    error("expected an expression");
  }
  // Call arguments after '(' : positional then keyword (name=value).
  void arguments(Node& n) {
    expect_op("(");
    while (!is_op(")")) {
      if (cur().kind == Token::Kind::name && t_[pos_ + 1].kind == Token::Kind::op && t_[pos_ + 1].text == "=") {
        n.names.push_back(next().text);
        next();
      } else if (!n.names.empty()) {
        error("positional argument after a keyword argument");
      }
      n.kids.push_back(expression());
      if (!is_op(",")) break;
      next();
    }
    expect_op(")");
  }
  NodePtr postfix(NodePtr n) {
    for (;;) {
      const size_t at = cur().offset;
      if (is_op(".")) {
        next();
        auto g = node(Node::Kind::getattr, at);
        g->name = cur().kind == Token::Kind::integer ? next().text : expect_name();
        g->kids.push_back(std::move(n));
        n = std::move(g);
      } else if (is_op("[")) {
        next();
        NodePtr parts[3];
        int colons = 0;
        for (;;) {
          if (is_op(":")) {
            next();
            if (++colons > 2) error("too many ':' in slice");
          } else if (is_op("]")) {
            break;
          } else {
            if (parts[colons]) error("expected ':' or ']'");
            parts[colons] = expression();
          }
        }
        next();
        auto g = node(colons ? Node::Kind::slice : Node::Kind::getitem, at);
        g->kids.push_back(std::move(n));
        if (!colons && !parts[0]) error("empty subscript");
        for (int k = 0; k < (colons ? 3 : 1); ++k) g->kids.push_back(std::move(parts[k]));
        n = std::move(g);
      } else if (is_op("(")) {
        auto c = node(Node::Kind::call, at);
        c->kids.push_back(std::move(n));
        arguments(*c);
        n = std::move(c);
      } else {
        return n;
      }
    }
  }
  NodePtr filters(NodePtr n) {
    for (;;) {
      if (is_op("|")) {
        auto f = node(Node::Kind::filter, next().offset);
        f->name = expect_name();
        while (is_op(".")) {  // dotted filter names
          next();
          f->name.push_back('.');
          f->name.append(expect_name());
        }
        f->kids.push_back(std::move(n));
        if (is_op("(")) arguments(*f);
        n = std::move(f);
      } else if (is_name("is")) {
        auto t = node(Node::Kind::test, next().offset);
        if (is_name("not")) {
          next();
          t->negated = true;
        }
        // `none`, `true` and `false` are names here even though they are also literals.
        t->name = expect_name();
        t->kids.push_back(std::move(n));
        if (is_op("(")) {
          arguments(*t);
        } else if (cur().kind == Token::Kind::string || cur().kind == Token::Kind::integer ||
                   cur().kind == Token::Kind::number) {
          t->kids.push_back(primary());  // `is divisibleby 3`
        }
        n = std::move(t);
      } else if (is_op("(")) {
        auto c = node(Node::Kind::call, cur().offset);
        c->kids.push_back(std::move(n));
        arguments(*c);
        n = std::move(c);
      } else {
        return n;
      }
    }
  }

  static constexpr int kMaxDepth = 100;
  const Source& src_;
  std::vector<Token> t_;
  size_t pos_ = 0;
  int depth_ = 0;
};

// ---- Statement parsing ----

class Parser {
 public:
  Parser(const Source& source, std::vector<Segment> segs) : src_(source), segs_(std::move(segs)) {}

  NodePtr parse_all() {
    std::string stop;
    auto body = block({}, stop);
    if (!stop.empty()) src_.error(segs_[pos_ - 1].offset, "unexpected '" + stop + "'");
    return body;
  }

 private:
  ExprParser expr_parser(const Segment& s) const { return ExprParser(src_, lex(src_, s.body, s.offset)); }

  // Parses statements until a tag whose keyword is in `stops` (returned in `stop`, its segment
  // consumed; the parser for it is left in `tag_`), or the end of the template.
  NodePtr block(const std::vector<std::string>& stops, std::string& stop) {
    auto body = std::make_unique<Node>();
    body->kind = Node::Kind::block;
    while (pos_ < segs_.size()) {
      const Segment& s = segs_[pos_++];
      if (s.kind == Segment::Kind::text) {
        auto t = std::make_unique<Node>();
        t->kind = Node::Kind::text;
        t->name = s.body;
        body->kids.push_back(std::move(t));
        continue;
      }
      ExprParser p = expr_parser(s);
      if (s.kind == Segment::Kind::output) {
        auto o = p.node(Node::Kind::output, s.offset);
        o->kids.push_back(p.expression());
        p.expect_end();
        body->kids.push_back(std::move(o));
        continue;
      }
      if (p.at_end()) src_.error(s.offset, "empty statement tag");
      const std::string keyword = p.expect_name();
      for (const auto& st : stops) {
        if (keyword == st) {
          stop = keyword;
          tag_ = std::make_unique<ExprParser>(std::move(p));
          return body;
        }
      }
      body->kids.push_back(statement(keyword, p, s));
    }
    if (!stops.empty()) {
      src_.error(src_.text().size(), "unexpected end of template, expected '" + stops.back() + "'");
    }
    stop.clear();
    return body;
  }

  NodePtr statement(const std::string& keyword, ExprParser& p, const Segment& s) {
    if (++depth_ > kMaxDepth) src_.error(s.offset, "statements nested too deeply");
    struct Leave {
      int& d;
      ~Leave() { --d; }
    } leave{depth_};
    std::string stop;
    if (keyword == "if") {
      auto n = p.node(Node::Kind::if_, s.offset);
      n->kids.push_back(p.expression());
      p.expect_end();
      for (;;) {
        n->kids.push_back(block({"elif", "else", "endif"}, stop));
        if (stop == "elif") {
          n->kids.push_back(tag_->expression());
          tag_->expect_end();
        } else if (stop == "else") {
          tag_->expect_end();
          n->kids.push_back(block({"endif"}, stop));
          tag_->expect_end();
          return n;
        } else {
          tag_->expect_end();
          return n;
        }
      }
    }
    if (keyword == "for") {
      auto n = p.node(Node::Kind::for_, s.offset);
      n->names.push_back(p.expect_name());
      while (p.is_op(",")) {
        p.next();
        n->names.push_back(p.expect_name());
      }
      if (!p.is_name("in")) p.error("expected 'in'");
      p.next();
      // kids: iterable, body, else body or null, loop filter or null
      n->kids.push_back(p.tuple_or_expression(false));
      NodePtr filter;
      if (p.is_name("if")) {
        p.next();
        filter = p.expression();
      }
      if (p.is_name("recursive")) p.error("recursive loops are not supported");
      p.expect_end();
      n->kids.push_back(block({"else", "endfor"}, stop));
      tag_->expect_end();
      if (stop == "else") {
        n->kids.push_back(block({"endfor"}, stop));
        tag_->expect_end();
      } else {
        n->kids.push_back(nullptr);
      }
      n->kids.push_back(std::move(filter));
      return n;
    }
    if (keyword == "set") {
      auto n = p.node(Node::Kind::set, s.offset);
      n->names.push_back(p.expect_name());
      if (p.is_op(".")) {
        p.next();
        n->names.push_back(p.expect_name());
      }
      if (p.at_end() && n->names.size() == 1) {  // {% set x %}...{% endset %}: x = rendered body
        n->name = "block";
        n->kids.push_back(block({"endset"}, stop));
        tag_->expect_end();
        return n;
      }
      if (!p.is_op("=")) p.error("expected '='");
      p.next();
      n->kids.push_back(p.tuple_or_expression());
      p.expect_end();
      return n;
    }
    if (keyword == "macro") {
      auto n = p.node(Node::Kind::macro, s.offset);
      n->name = p.expect_name();
      n->kids.push_back(nullptr);  // body, below
      p.expect_op("(");
      while (!p.is_op(")")) {
        n->names.push_back(p.expect_name());
        if (p.is_op("=")) {
          p.next();
          n->kids.push_back(p.expression());
        } else {
          n->kids.push_back(nullptr);
        }
        if (!p.is_op(",")) break;
        p.next();
      }
      p.expect_op(")");
      p.expect_end();
      n->kids[0] = block({"endmacro"}, stop);
      tag_->expect_end();
      return n;
    }
    if (keyword == "break" || keyword == "continue") {
      p.expect_end();
      return p.node(keyword == "break" ? Node::Kind::break_ : Node::Kind::continue_, s.offset);
    }
    src_.error(s.offset, "unknown or misplaced statement '" + keyword + "'");
  }

  static constexpr int kMaxDepth = 100;
  const Source& src_;
  std::vector<Segment> segs_;
  size_t pos_ = 0;
  int depth_ = 0;
  std::unique_ptr<ExprParser> tag_;
};

}  // namespace

NodePtr parse(const std::string& source, const std::string& what) {
  const Source src(source, what);
  return Parser(src, split_segments(src)).parse_all();
}

}  // namespace mxmoe::jinja
