#pragma once
// Decode-size fused-MoE expert kernels (few tokens): only the active experts' weights are read,
// each once, for all the pairs routed to them.
#include <cuda_runtime.h>

#include "engine/tensor.h"
#include "kernels/fused_moe.h"
#include "kernels/moe_permutation.h"
#include "kernels/mxfp8.h"
#include "kernels/w8a16_gemv.h"

namespace mxmoe {

// act[p, I] = SiLU(x[p / k] · W13_e[0:I]ᵀ) ⊙ (x[p / k] · W13_e[I:2I]ᵀ) for every pair p of expert e.
// x [T, H] bf16; w13 [E, 2I, H] (gate rows, then up rows); act [T*k, I] bf16.
void moe_gate_up_decode(const Tensor& x, const MxTensor& w13, const MoePermutation& perm, int top_k,
                        const Tensor& act, cudaStream_t stream, const DecodeTuning& tuning = {});
void moe_gate_up_decode(const Tensor& x, const Tensor& w13, const MoePermutation& perm, int top_k, const Tensor& act,
                        cudaStream_t stream, const DecodeTuning& tuning = {});  // bf16 weights

// The down kernels read `perm` before their programmatic-launch wait (to prefetch the experts'
// weights): perm must not be written by the kernel launched right before them (in fused_moe the
// gate/up kernel sits between the routing and down).
// y[p, H] = act[p] · W2_eᵀ for every pair p of expert e. act [T*k, I] bf16; w2 [E, H, I]; y [T*k, H] f32
// (the caller's combine sums a token's slots with the routing weights).
void moe_down_decode(const Tensor& act, const MxTensor& w2, const MoePermutation& perm, const Tensor& y,
                     cudaStream_t stream, const DecodeTuning& tuning = {});
void moe_down_decode(const Tensor& act, const Tensor& w2, const MoePermutation& perm, const Tensor& y,
                     cudaStream_t stream, const DecodeTuning& tuning = {});  // bf16 weights

// fused_moe (kernels/fused_moe.h) on the decode path with the router's logits GEMV in the routing
// launch (moe_router_route_permute): router_logits = x · router_weightᵀ (bf16 products, fp32 sums)
// is written too, then routed exactly as fused_moe routes it. Saves the logits GEMM's launch and
// its wait per MoE layer. x [T, H] bf16; router_weight [E, H] bf16 (a router without bias);
// router_logits [T, E] f32; out [T, H] bf16. Only where fused_moe_router_fusable (CUDA, T <= 16,
// T·E <= 4096, H a multiple of 8); callers run the router GEMM and fused_moe otherwise.
bool fused_moe_router_fusable(const Tensor& x, const Tensor& router_weight, const MoeRouting& routing);
void fused_moe_with_router(const Tensor& x, const Tensor& router_weight, const Tensor& router_logits,
                           const MoeWeights& w, const MoeRouting& routing, const Tensor& out, MoeWorkspace& workspace,
                           cudaStream_t stream);

}  // namespace mxmoe
