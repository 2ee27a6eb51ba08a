#pragma once
// The "decoder" of tokenizer.json: turns the token strings of an id sequence back into text.
// Supported: ByteLevel, Metaspace, Replace (String pattern), ByteFallback, Fuse, Strip, Sequence;
// without a decoder tokens are joined with spaces, as in tokenizers.
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace mxmoe {

class Decoder {
 public:
  Decoder() = default;
  Decoder(const nlohmann::json& spec, const std::string& what);

  std::string operator()(std::vector<std::string> tokens) const;

 private:
  using Step = std::function<std::vector<std::string>(std::vector<std::string>)>;
  void add(const nlohmann::json& spec, const std::string& what);
  std::vector<Step> steps_;
  bool join_with_space_ = true;
};

}  // namespace mxmoe
