// Qwen2-MoE: q/k/v biases, routed experts plus a shared expert whose output is scaled by
// sigmoid(shared_expert_gate · x) and added to the routed sum.
#include "models/decoder.h"

namespace mxmoe {

DecoderSpec qwen2_moe_spec(const ModelConfig& config) {
  DecoderSpec spec;
  spec.shared_expert = config.shared_expert_intermediate_size > 0;
  return spec;
}

}  // namespace mxmoe
