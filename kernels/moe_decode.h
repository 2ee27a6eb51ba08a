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

// One token routed by the expert kernels themselves, without a permutation: every block finds the
// token's top-k experts from its router logits (the routing's order and ties), and pair s is slot
// s (act and y rows = slots). The down kernel's block 0 also writes the slots' experts and routing
// weights (as moe_route) for the combine.
struct MoeTokenRoute {
  Tensor logits;  // f32 [1, E], written at least two kernels before the down kernel
  int top_k = 0;
  bool renormalize = false;
  Tensor ids, weights;  // i32 / f32 [top_k], written by moe_down_decode
};
void moe_gate_up_decode(const Tensor& x, const MxTensor& w13, const MoeTokenRoute& route, const Tensor& act,
                        cudaStream_t stream, const DecodeTuning& tuning = {});
void moe_gate_up_decode(const Tensor& x, const Tensor& w13, const MoeTokenRoute& route, const Tensor& act,
                        cudaStream_t stream, const DecodeTuning& tuning = {});
void moe_down_decode(const Tensor& act, const MxTensor& w2, const MoeTokenRoute& route, const Tensor& y,
                     cudaStream_t stream, const DecodeTuning& tuning = {});
void moe_down_decode(const Tensor& act, const Tensor& w2, const MoeTokenRoute& route, const Tensor& y,
                     cudaStream_t stream, const DecodeTuning& tuning = {});

// One token with MXFP8 experts: gate/up and down in one launch (y and act as the two kernels above
// leave them, block 0 writing route.ids and route.weights), on sm_90 where
// moe_experts_one_launch_fits: H a multiple of 128, top_k · H/128 <= the SM count (a block per 128
// rows of a slot's W2), and those rows in one block's shared memory (I up to ~1500). counters: i32
// [>= moe_experts_counters(top_k)] on the device, zero before the first call; every call leaves
// them zero. Calls using the same counters must not run concurrently; calls with their own
// counters may (the launch finishes on whatever part of the GPU it gets).
bool moe_experts_one_launch_fits(int64_t hidden, int64_t inter, int top_k);
constexpr int64_t moe_experts_counters(int top_k) { return 2 * int64_t(top_k) + 2; }
void moe_experts_decode(const Tensor& x, const MxTensor& w13, const MxTensor& w2, const MoeTokenRoute& route,
                        const Tensor& act, const Tensor& y, const Tensor& counters, cudaStream_t stream);

// fused_moe (kernels/fused_moe.h) on the decode path with the router's logits GEMV in the routing
// launch (moe_router_route_permute): router_logits = x · router_weightᵀ (bf16 products, fp32 sums)
// is written too, then routed exactly as fused_moe routes it. Saves the logits GEMM's launch and
// its wait per MoE layer. x [T, H] bf16; router_weight [E, H] bf16 (a router without bias);
// router_logits [T, E] f32; out [T, H] bf16. Only where fused_moe_router_fusable (CUDA, T <= 16,
// T·E <= 4096, H a multiple of 8); callers run the router GEMM and fused_moe otherwise.
// At T = 1 the router launch writes only the logits and the expert kernels route the token
// themselves (MoeTokenRoute): no routing launch at all (MXMOE_MOE_TOKEN_ROUTE=0: the routing
// launch instead, for comparison). The same ids, weights and output either way.
bool fused_moe_router_fusable(const Tensor& x, const Tensor& router_weight, const MoeRouting& routing);
void fused_moe_with_router(const Tensor& x, const Tensor& router_weight, const Tensor& router_logits,
                           const MoeWeights& w, const MoeRouting& routing, const Tensor& out, MoeWorkspace& workspace,
                           cudaStream_t stream);

}  // namespace mxmoe
