#pragma once
// The stop ids of a checkpoint: eos_token_id of config.json and of generation_config.json
// (an int or a list in either), merged and de-duplicated, as transformers' generate() stops.
#include <cstdint>
#include <string>
#include <vector>

#include "loader/model_config.h"

namespace mxmoe {

// dir: the checkpoint directory (generation_config.json is optional there).
std::vector<int32_t> load_stop_ids(const std::string& dir, const ModelConfig& config);

}  // namespace mxmoe
