#pragma once
// Hugging Face config files write some id fields (eos_token_id, bos_token_id, mlp_only_layers) as
// an integer or a list of integers; both readers of those files parse them here.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

namespace mxmoe {

// The integers of `v`, or nullopt when v is neither an integer nor a list of integers (the caller
// words the error, naming its file and field).
inline std::optional<std::vector<int64_t>> int_or_int_list(const nlohmann::json& v) {
  if (v.is_number_integer()) return std::vector<int64_t>{v.get<int64_t>()};
  if (!v.is_array()) return std::nullopt;
  std::vector<int64_t> out;
  for (const nlohmann::json& e : v) {
    if (!e.is_number_integer()) return std::nullopt;
    out.push_back(e.get<int64_t>());
  }
  return out;
}

}  // namespace mxmoe
