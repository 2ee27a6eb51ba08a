#pragma once
// The "pre_tokenizer" of tokenizer.json: splits a normalized piece into words for the model.
// Supported: Split (String/Regex pattern, behavior Isolated or Removed, invert), ByteLevel
// (add_prefix_space, use_regex with the GPT-2 regex; maps bytes to its 256 characters),
// Metaspace (replacement, prepend_scheme always/first/never, split), Sequence.
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace mxmoe {

class PreTokenizer {
 public:
  PreTokenizer() = default;  // the whole piece is one word
  PreTokenizer(const nlohmann::json& spec, const std::string& what);

  // Splits `piece` (valid UTF-8) into non-empty words. `at_text_start`: the piece begins the
  // encoded text (Metaspace's "first" scheme prepends only there).
  std::vector<std::string> operator()(std::string piece, bool at_text_start) const;

  struct Word {
    std::string text;
    bool at_text_start;
  };

 private:
  using Step = std::function<void(const Word& in, std::vector<Word>& out)>;
  void add(const nlohmann::json& spec, const std::string& what);
  std::vector<Step> steps_;
};

}  // namespace mxmoe
