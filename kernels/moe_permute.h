#pragma once
// Device-side token -> expert permutation and the data movement around the expert GEMMs
// (all asynchronous on `stream`, no host sync, capturable in a CUDA graph):
//   moe_permute       topk_ids -> MoePermutation (+ each pair's row in the sorted order)
//   moe_route_permute router (moe_routing.h) + moe_permute, fused for small batches
//   moe_router_route_permute  the router logits GEMV + moe_route_permute in one launch (decode)
//   moe_gather_rows   x rows into expert order (prefill)
//   moe_silu_mul      act = SiLU(gate) ⊙ up (prefill, between the two grouped GEMMs)
//   moe_combine       out[t] = Σ_slot weight[t, slot] · y[row of pair (t, slot)]
#include <cuda_runtime.h>

#include "engine/tensor.h"
#include "kernels/moe_permutation.h"

namespace mxmoe {

// Device buffers of a permutation for `n_pairs` = T * top_k pairs and `n_experts` experts, plus
// the scratch moe_permute needs (per-chunk expert counts).
struct MoePermuteBuffers {
  MoePermutation perm;
  Tensor pair_rows;     // [n_pairs] i32: pair p sits at sorted_pairs[pair_rows[p]] (the inverse)
  Tensor chunk_counts;  // [n_chunks, E] i32 scratch
  Tensor blocks_done;   // [1] i32, zero between calls: moe_router_route_permute's finished blocks
};
MoePermuteBuffers moe_permute_buffers(int64_t n_pairs, int64_t n_experts);
int64_t moe_permute_chunks(int64_t n_pairs);  // rows of chunk_counts

// topk_ids [T * top_k] i32, every id in [0, E) (as moe_route writes them). Fills all of `out`.
void moe_permute(const Tensor& topk_ids, const MoePermuteBuffers& out, cudaStream_t stream);

// moe_route (moe_routing.h) then moe_permute, in one single-block launch when T·k <=
// kMoeFusedRoutePairs (decode: saves three dependent launches), else in the four launches.
constexpr int64_t kMoeFusedRoutePairs = 1024;
void moe_route_permute(const Tensor& logits, int top_k, bool renormalize, const Tensor& topk_ids,
                       const Tensor& topk_weights, const MoePermuteBuffers& out, cudaStream_t stream);

// moe_route_permute on router_logits = x · router_weightᵀ computed in the same launch (decode: no
// logits GEMM launch before it). Each block computes 4 experts' logits for every token (bf16
// products, fp32 sums; the router weight loads start before the programmatic-launch wait, under
// the previous kernel); the last block to finish (an atomic count, reset by that block, so the
// launch replays from a CUDA graph) routes and permutes as moe_route_permute does, on the logits
// it wrote (also returned: router_logits [T, E] f32). Needs moe_router_fusable; x [T, H] bf16;
// router_weight [E, H] bf16; out.blocks_done zero (moe_permute_buffers zeroes it; the kernel leaves
// it zero).
constexpr int64_t kMoeRouterMaxTokens = 16;
bool moe_router_fusable(int64_t n_tokens, int64_t n_experts, int64_t hidden, int top_k);
void moe_router_route_permute(const Tensor& x, const Tensor& router_weight, const Tensor& router_logits, int top_k,
                              bool renormalize, const Tensor& topk_ids, const Tensor& topk_weights,
                              const MoePermuteBuffers& out, cudaStream_t stream);
// Its router GEMV alone: router_logits = x · router_weightᵀ (the same sums), for a token the
// expert kernels route themselves (MoeTokenRoute, kernels/moe_decode.h). T <= 16, H % 8 == 0.
void moe_router_logits(const Tensor& x, const Tensor& router_weight, const Tensor& router_logits, cudaStream_t stream);

// The decoder's step before an MoE block and the router GEMV in one launch, for one token:
//   residual_out = bf16(residual + add); normed = RMSNorm(residual_out) · norm_weight
//   router_logits = normed · router_weightᵀ
// bit-equal to add_rmsnorm (kernels/rmsnorm.h) followed by moe_router_logits: every block of the
// router GEMV norms the row itself (2 x H bf16 of L2 reads), so the GEMV no longer waits for a norm
// kernel. Block 0 writes residual_out and normed; residual_out must not be residual (other blocks
// may still read it). residual, add, residual_out, normed [1, H] bf16; norm_weight [H] bf16;
// router_weight [E, H] bf16; router_logits [1, E] f32. Needs moe_norm_router_fusable.
constexpr int64_t kMoeNormRouterMaxHidden = 8192;
bool moe_norm_router_fusable(int64_t n_tokens, int64_t hidden);
void moe_norm_router_logits(const Tensor& residual, const Tensor& add, const Tensor& norm_weight, float eps,
                            const Tensor& residual_out, const Tensor& normed, const Tensor& router_weight,
                            const Tensor& router_logits, cudaStream_t stream);

// moe_combine and then add_rmsnorm, in one launch, for one token's slots (y by pair, no rows):
//   residual = bf16(residual + bf16(Σ_slot weights[slot] · y[slot])); out = RMSNorm(residual) · norm_weight
// bit-equal to the two. y [top_k, H] f32; weights [top_k] f32; residual, out [1, H] bf16 (residual
// updated in place); norm_weight [H] bf16. Needs moe_combine_norm_fusable(H): one block holds the
// row, a vector of 8 per thread, and the slots' loads in flight together need 512 threads' registers.
// release_next_early: the next kernel (the qkv GEMV) may launch before this one waits (PDL,
// kernels/pdl.cuh; never with MXMOE_EARLY_DEPENDENTS=0), so its blocks load their first weights
// under the MoE tail. Measured on the H100 (bench, one call, ms/step, let go early vs held back):
// after the two expert kernels it pays, Mixtral-8x7B 6.367 / 6.354 vs 6.373 / 6.371, OLMoE 1.067 /
// 1.065 vs 1.080 / 1.078; after the one-launch expert pair, whose tail streams its W2 rows, it
// costs, Qwen3-30B-A3B 2.805 / 2.796 vs 2.781 / 2.778 (MoeSlots::one_launch tells them apart).
constexpr int64_t kMoeCombineNormMaxHidden = 4096;
inline bool moe_combine_norm_fusable(int64_t hidden) {
  return hidden > 0 && hidden % 8 == 0 && hidden <= kMoeCombineNormMaxHidden;
}
void moe_combine_add_rmsnorm(const Tensor& y, const Tensor& weights, const Tensor& residual, const Tensor& norm_weight,
                             float eps, const Tensor& out, bool release_next_early, cudaStream_t stream);

// xs[i] = x[sorted_pairs[i] / top_k]. x [T, H] bf16; xs [T * top_k, H] bf16.
void moe_gather_rows(const Tensor& x, const MoePermutation& perm, int top_k, const Tensor& xs, cudaStream_t stream);

// act[m, i] = SiLU(h[m, i]) · h[m, I + i]. h [M, 2I] bf16 (gate columns, then up); act [M, I] bf16.
void moe_silu_mul(const Tensor& h, const Tensor& act, cudaStream_t stream);

// out[t] = Σ_slot weights[t, slot] · y[rows[t * top_k + slot]], summed in fp32 in slot order and
// rounded to bf16 once. y [T * top_k, H] f32 or bf16; weights [T * top_k] f32; rows [T * top_k]
// i32, or nullptr for the identity (y indexed by pair); out [T, H] bf16.
void moe_combine(const Tensor& y, const Tensor& weights, const Tensor* rows, int top_k, const Tensor& out,
                 cudaStream_t stream);

}  // namespace mxmoe
