#include "engine/tokenizer_regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "engine/error.h"
#include "engine/utf8.h"

namespace mxmoe {
namespace {

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof(buf));
  return reinterpret_cast<const char*>(buf);
}

// JIT matching needs a stack per thread; long runs of whitespace overflow the default 32 KiB.
pcre2_jit_stack* thread_jit_stack(void*) {
  struct Stack {
    pcre2_jit_stack* s = pcre2_jit_stack_create(64 * 1024, 8 * 1024 * 1024, nullptr);
    ~Stack() { pcre2_jit_stack_free(s); }
  };
  thread_local Stack stack;
  return stack.s;
}

}  // namespace

struct Regex::Code {
  pcre2_code* code = nullptr;
  pcre2_match_context* context = nullptr;
  ~Code() {
    pcre2_match_context_free(context);
    pcre2_code_free(code);
  }
};

Regex::Regex(const std::string& pattern, const std::string& what) : what_(what) {
  auto c = std::make_shared<Code>();
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  c->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                          PCRE2_UTF | PCRE2_UCP, &err, &err_offset, nullptr);
  MXMOE_CHECK(c->code, what, ": cannot compile regex /", pattern, "/ at offset ", err_offset, ": ",
              pcre2_message(err));
  // Without JIT support pcre2_match interprets the pattern: slower, same results.
  if (pcre2_jit_compile(c->code, PCRE2_JIT_COMPLETE) == 0) {
    c->context = pcre2_match_context_create(nullptr);
    pcre2_jit_stack_assign(c->context, thread_jit_stack, nullptr);
  }
  code_ = std::move(c);
}

std::string Regex::escape(std::string_view literal) {
  std::string out = "\\Q";
  for (size_t pos = 0;;) {  // \Q...\E cannot contain \E itself
    const size_t e = literal.find("\\E", pos);
    if (e == std::string_view::npos) {
      out.append(literal.substr(pos));
      break;
    }
    out.append(literal.substr(pos, e - pos)).append("\\E\\\\E\\Q");
    pos = e + 2;
  }
  return out + "\\E";
}

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view text) const {
  std::vector<std::pair<size_t, size_t>> out;
  std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
      pcre2_match_data_create_from_pattern(code_->code, nullptr), pcre2_match_data_free);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = 0;
  while (pos <= text.size()) {
    const int rc = pcre2_match(code_->code, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, md.get(),
                               code_->context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    MXMOE_CHECK(rc >= 0, what_, ": regex match failed: ", pcre2_message(rc));
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
    if (ov[1] == ov[0]) {  // empty match: step over one character
      if (ov[0] >= text.size()) break;
      pos = ov[0] + utf8::char_len(static_cast<unsigned char>(text[ov[0]]));
      continue;
    }
    out.emplace_back(ov[0], ov[1]);
    pos = ov[1];
  }
  return out;
}

}  // namespace mxmoe
