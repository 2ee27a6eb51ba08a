#pragma once
// The "normalizer" of tokenizer.json: a chain of string -> string steps (Sequence flattened).
// Supported: NFC, NFD, NFKC, NFKD (utf8proc), Lowercase, Prepend, Replace (String or Regex).
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace mxmoe {

class Normalizer {
 public:
  Normalizer() = default;  // identity
  // `spec` is the normalizer object (or null); unsupported types are an error naming them.
  Normalizer(const nlohmann::json& spec, const std::string& what);

  // Normalizes a non-empty piece of valid UTF-8.
  std::string operator()(std::string s) const;
  bool empty() const { return steps_.empty(); }

 private:
  void add(const nlohmann::json& spec, const std::string& what);
  std::vector<std::function<std::string(std::string)>> steps_;
};

}  // namespace mxmoe
