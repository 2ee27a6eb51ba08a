#pragma once
// Test helper for layers: loads a Loadable the way the loader does (begin_loading, each spec's TP
// slice of the full checkpoint tensor copied into weight_dest, finish_loading), from tensors in memory.
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "engine/error.h"
#include "engine/loadable.h"
#include "engine/registry.h"

namespace mxmoe::testing {

using Checkpoint = std::map<std::string, Tensor>;  // name -> full tensor (CPU, in the layer's params dtype)

inline void load_layer(Loadable& layer, const Checkpoint& checkpoint) {
  layer.begin_loading();
  const std::vector<WeightSpec> specs = layer.weight_specs();
  for (size_t i = 0; i < specs.size(); ++i) {
    const WeightSpec& spec = specs[i];
    const auto it = checkpoint.find(spec.name);
    MXMOE_CHECK(it != checkpoint.end(), "test checkpoint has no tensor ", spec.name);
    MXMOE_CHECK(it->second.shape() == spec.shape, "test checkpoint tensor ", spec.name, " is ",
                shape_str(it->second.shape()), ", spec says ", shape_str(spec.shape));
    const Tensor src = spec.shard.dim < 0 ? it->second : it->second.narrow(spec.shard.dim, spec.shard.begin, spec.shard.length);
    layer.weight_dest(i).copy_from(src);
  }
  layer.finish_loading();
}

// A QuantConfig for one scheme ("bf16", "mxfp8"), the rest default.
inline QuantConfig scheme(const char* name) {
  QuantConfig q;
  q.scheme = name;
  return q;
}

}  // namespace mxmoe::testing
