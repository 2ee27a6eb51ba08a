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
//
// Tensor parallelism (ModelOptions::comm, tp ranks; DESIGN.md): each rank holds num_attention_heads
// / tp query heads and the KV heads they read (num_key_value_heads / tp of them, or, when tp >
// num_key_value_heads, the one KV head its query heads share, held by tp / num_key_value_heads
// ranks), the vocabulary rows [r·V/tp, (r+1)·V/tp) of the embedding and the LM head, and 1/tp of
// every MLP and expert width. Column-parallel: qkv_proj, gate_up, the experts' w13 and the shared
// expert's gate_up; row-parallel: o_proj, down, the experts' w2, the shared expert's down. Routers
// and the shared-expert gate are replicated. Collectives per step, in this order on every rank:
//   h = all_reduce(embed_shard(ids))          rows of other ranks' vocabularies are zero
//   per layer: [OLMoE: all_gather q and k for the norm over all heads]
//              all_reduce(o_proj partial);  all_reduce(mlp partial)
//   a MoE block is one all_reduce of (experts partial + sigmoid(g·n) · shared-expert partial): the
//   gate g is replicated, so the gated partials sum to the gated whole
//   logits = all_gather(lm_head_shard(rows)), rearranged [tp, R, V/tp] -> [R, V]
// The residual stream, and so every norm, router choice and logit, is bit-identical on all ranks
// (an all-reduce hands every rank the same sum). It is not bit-identical to tp = 1: each rank's
// partial output is rounded to bf16 before the sum (tp = 1 rounds the one f32 accumulation once),
// and the sum itself adds tp bf16 partials (the CPU communicator in f32 in rank order; NCCL in its
// ring/tree order) — a few bf16 ulps per row-parallel output, ~1e-2 relative on the logits, and a
// router near-tie may then pick the other expert.
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
