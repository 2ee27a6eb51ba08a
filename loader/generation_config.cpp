#include "loader/generation_config.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/error.h"
#include "loader/json_ints.h"

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
    if (j.contains("eos_token_id") && !j["eos_token_id"].is_null()) {
      const std::optional<std::vector<int64_t>> eos = int_or_int_list(j["eos_token_id"]);
      MXMOE_CHECK(eos, path, ": eos_token_id must be an integer or a list of integers, got ", j["eos_token_id"].dump());
      ids.insert(ids.end(), eos->begin(), eos->end());
    }
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

}  // namespace mxmoe
