#include "loader/generation_config.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/error.h"

namespace mxmoe {

std::vector<int32_t> load_stop_ids(const std::string& dir, const ModelConfig& config) {
  std::vector<int32_t> ids(config.eos_token_ids.begin(), config.eos_token_ids.end());
  const std::string path = dir + "/generation_config.json";
  if (std::filesystem::exists(path)) {
    std::ifstream in(path);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      fail(path, ": invalid JSON: ", e.what());
    }
    const auto add = [&](const nlohmann::json& v) {
      MXMOE_CHECK(v.is_number_integer(), path, ": eos_token_id must be an integer or a list of integers, got ", v.dump());
      ids.push_back(v.get<int32_t>());
    };
    if (j.contains("eos_token_id") && !j["eos_token_id"].is_null()) {
      if (j["eos_token_id"].is_array())
        for (const auto& v : j["eos_token_id"]) add(v);
      else
        add(j["eos_token_id"]);
    }
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

}  // namespace mxmoe
