// OLMoE: RMSNorm over the whole q and k projections (q_norm [heads·head_dim]), routed experts
// without renormalization (norm_topk_prob false in its config). clip_qkv is not supported.
#include "engine/error.h"
#include "models/decoder.h"

namespace mxmoe {

DecoderSpec olmoe_spec(const ModelConfig& config) {
  MXMOE_CHECK(!config.clip_qkv, config.file, ": clip_qkv = ", config.clip_qkv.value_or(0),
              " is not supported (OLMoE checkpoints set it to null)");
  DecoderSpec spec;
  spec.qk_norm = QkNorm::full;
  return spec;
}

}  // namespace mxmoe
