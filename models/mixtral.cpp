// Mixtral: Llama attention; every layer's MLP is block_sparse_moe with experts w1 (gate), w3 (up),
// w2 (down) and a renormalized top-k router.
#include "models/decoder.h"

namespace mxmoe {

DecoderSpec mixtral_spec(const ModelConfig&) {
  DecoderSpec spec;
  spec.moe_block = "block_sparse_moe";
  spec.mixtral_expert_names = true;
  return spec;
}

}  // namespace mxmoe
