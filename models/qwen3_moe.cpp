// Qwen3-MoE: Qwen3 attention (per-head QK-norm) with routed experts (mlp.experts.{e}.gate_proj/
// up_proj/down_proj, router mlp.gate); layers in mlp_only_layers or off decoder_sparse_step are dense.
#include "models/decoder.h"

namespace mxmoe {

DecoderSpec qwen3_moe_spec(const ModelConfig&) {
  DecoderSpec spec;
  spec.qk_norm = QkNorm::per_head;
  return spec;
}

}  // namespace mxmoe
