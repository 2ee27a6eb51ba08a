#pragma once
// The decoder-only transformer every supported architecture is an instance of. An architecture
// file (models/<arch>.cpp) says only what differs: QK-norm, biases, the MoE block's names, a shared
// expert, which layers are sparse. The forward pass (decoder.cpp) reads like the math:
//
//   h = embed(ids)
//   for each layer:
//     n = norm(h)                                    (h += previous MLP output first)
//     q, k, v = split(qkv_proj(n));  q, k = qk_norm(q, k);  q, k = rope(q, k, positions)
//     cache[slots] = k, v;  a = attention(q, cache)
//     h += o_proj(a);  n = norm(h)
//     mlp = down(silu(gate(n)) · up(n))                                   dense layers
//         = Σ_top-k w_e · expert_e(n)  (+ sigmoid(g·n) · shared(n))       MoE layers
//   logits = lm_head(norm(h + mlp)[logit rows])
#include <string>

#include "engine/fused_moe_layer.h"
#include "models/model.h"

namespace mxmoe {

enum class QkNorm : uint8_t {
  none,
  per_head,  // Qwen3: RMSNorm over head_dim of every head (q_norm/k_norm weights [head_dim])
  full,      // OLMoE: RMSNorm over the whole q and k projections (weights [heads · head_dim])
};

struct DecoderSpec {
  QkNorm qk_norm = QkNorm::none;
  std::string moe_block = "mlp";      // name of the MoE module in a layer ("block_sparse_moe" for Mixtral)
  bool mixtral_expert_names = false;  // experts.{e}.w1/w3/w2 instead of gate_proj/up_proj/down_proj
  bool shared_expert = false;         // Qwen2-MoE: mlp.shared_expert + sigmoid mlp.shared_expert_gate
};

// One per architecture file; make_causal_lm (decoder.cpp) maps model_type to these.
DecoderSpec llama_spec(const ModelConfig& config);      // llama, qwen2, qwen3 (dense)
DecoderSpec qwen3_moe_spec(const ModelConfig& config);
DecoderSpec mixtral_spec(const ModelConfig& config);
DecoderSpec olmoe_spec(const ModelConfig& config);
DecoderSpec qwen2_moe_spec(const ModelConfig& config);

}  // namespace mxmoe
