#pragma once
// Reads rope_theta and rope_scaling (or transformers >= 5's rope_parameters) from a config.json
// object as transformers does, into the rope kernel's RopeConfig. Unknown or unsupported rope
// types (longrope, partial rotary, ...) are an Error naming them. The defaults are the config
// class's values for fields the file omits (Mixtral's rope_theta is 1e6, not 10000).
#include <cstdint>
#include <nlohmann/json_fwd.hpp>

#include "kernels/rope.h"

namespace mxmoe {

RopeConfig parse_rope_config(const nlohmann::json& config, int head_dim, double default_theta = 10000.0,
                             int64_t default_max_position_embeddings = 0);

}  // namespace mxmoe
