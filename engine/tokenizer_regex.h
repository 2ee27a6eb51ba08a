#pragma once
// A compiled PCRE2 regex (UTF + UCP, so \p{L}, \s, \w are Unicode-aware like the Oniguruma
// regexes Hugging Face tokenizers uses), JIT-compiled when the platform supports it.
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mxmoe {

class Regex {
 public:
  // `what` names the regex's origin in error messages (e.g. "tokenizer.json pre_tokenizer").
  Regex(const std::string& pattern, const std::string& what);
  // Pattern matching `literal` exactly.
  static std::string escape(std::string_view literal);

  // Non-overlapping matches [begin, end) from left to right; `text` must be valid UTF-8.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;

 private:
  struct Code;
  std::shared_ptr<const Code> code_;
  std::string what_;
};

}  // namespace mxmoe
