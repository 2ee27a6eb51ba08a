// Llama, Qwen2 and Qwen3 (dense): pre-norm attention with GQA and RoPE, SiLU-gated MLP.
// Qwen2 adds q/k/v biases (read from config as qkv_bias); Qwen3 normalizes each head of q and k.
#include "models/decoder.h"

namespace mxmoe {

DecoderSpec llama_spec(const ModelConfig& config) {
  DecoderSpec spec;
  if (config.model_type == "qwen3") spec.qk_norm = QkNorm::per_head;
  return spec;
}

}  // namespace mxmoe
