#pragma once
// The "pre_tokenizer" of tokenizer.json: splits a normalized piece into words for the model.
// Supported: Split (String/Regex pattern, behavior Isolated or Removed, invert), ByteLevel
// (add_prefix_space, use_regex with the GPT-2 regex; maps bytes to its 256 characters), Sequence.
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace mxmoe {

class PreTokenizer {
 public:
  PreTokenizer() = default;  // the whole piece is one word
  PreTokenizer(const nlohmann::json& spec, const std::string& what);

  // Splits `piece` (valid UTF-8) into non-empty words.
  std::vector<std::string> operator()(std::string piece) const;

 private:
  using Step = std::function<void(const std::string& in, std::vector<std::string>& out)>;
  void add(const nlohmann::json& spec, const std::string& what);
  std::vector<Step> steps_;
};

}  // namespace mxmoe
