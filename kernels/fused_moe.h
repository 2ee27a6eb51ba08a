#pragma once
// Fused MoE forward (kernel level; the registry's FusedMoE layer calls it):
//   router: softmax(router_logits) over all experts (fp32) -> top-k (ties: lowest index) ->
//           renormalize the k weights when routing.renormalize
//   out[t] = Σ_slot weight[t, slot] · W2_e (SiLU(W13_e[gate] x_t) ⊙ W13_e[up] x_t)
// Weights are one tensor-parallel rank's shard (the intermediate size I is sharded; the caller
// all-reduces). CPU tensors run the reference; CUDA tensors run the kernels with no host sync.
#include <cuda_runtime.h>

#include <memory>

#include "engine/tensor.h"
#include "kernels/mxfp8.h"

namespace mxmoe {

struct MoeWeights {
  // Exactly one form is set.
  MxTensor w13_mx, w2_mx;  // MXFP8: [E, 2I, H] (gate rows, then up rows) / [E, H, I]
  Tensor w13, w2;          // bf16:  [E, 2I, H] / [E, H, I]
  bool quantized() const { return w13_mx.elems.defined() && w13_mx.elems.numel() > 0; }
};

struct MoeRouting {
  int top_k = 2;
  bool renormalize = true;  // Mixtral, Qwen3-MoE (norm_topk_prob); OLMoE and Qwen2-MoE: false
};

// Device scratch reused across calls (grown on demand). Default-constructible and movable, so a
// layer can hold one as a member; its contents are private to fused_moe.
class MoeWorkspace {
 public:
  MoeWorkspace();
  ~MoeWorkspace();
  MoeWorkspace(MoeWorkspace&&) noexcept;
  MoeWorkspace& operator=(MoeWorkspace&&) noexcept;
  struct Impl;
  Impl& impl();

 private:
  std::unique_ptr<Impl> impl_;
};

// x [T, H] bf16; router_logits [T, E] f32; out [T, H] bf16.
void fused_moe(const Tensor& x, const Tensor& router_logits, const MoeWeights& w, const MoeRouting& routing,
               const Tensor& out, MoeWorkspace& workspace, cudaStream_t stream);

// CUDA expert path. T is known on the host (the routing is not), so the path is chosen by T:
// decode reads only the active experts' weights, once per 32 pairs, with GEMV-like kernels;
// prefill gathers x into expert order and runs two grouped tensor-core GEMMs (moe_prefers_decode).
// At T = 1 (decode) the expert kernels route the token from router_logits themselves, with no
// routing launch (MoeTokenRoute, kernels/moe_decode.h; MXMOE_MOE_TOKEN_ROUTE=0 turns it off).
// The workspace grows on the first call of a size; run one call at the largest T before capturing
// a CUDA graph (growing inside a capture fails, as any allocation does).
enum class MoePath : uint8_t { automatic, decode, prefill };
// Decode while the pairs per expert average at most 16. Measured on H100 (bench-moe, fused_moe
// per call, MXFP8, both paths in one run, after the grouped GEMM fitted its tiles to the rows):
// decode over prefill 1.55-1.79x at Qwen3-30B-A3B T = 16..128 (1-8 pairs per expert), 1.22x at 16
// per expert, 0.84x at 32; Mixtral-8x7B 1.41x at 4, 1.07x at 16, 0.75x at 32. So 16 for both.
inline bool moe_prefers_decode(int64_t tokens, int top_k, int64_t experts) { return tokens * top_k <= 16 * experts; }
// Router, routing and permutation in one launch (fused_moe_with_router) up to this many tokens.
constexpr int64_t kMoeDecodeMaxTokens = 16;
// fused_moe at one token (CUDA) up to, not including, its combine: the slots' expert outputs
// y [top_k, H] f32 and routing weights [top_k] f32, left in the workspace (valid until its next
// call) for a caller that folds the combine into its next kernel (moe_combine_add_rmsnorm,
// kernels/moe_permute.h). The expert kernels route the token themselves, as fused_moe does.
struct MoeSlots {
  Tensor y, weights;
  // Whether the expert pair ran as one launch (moe_experts_decode), whose tail streams W2 rows: the
  // caller's next kernel then should not let a GEMV start loading its weights under it (see
  // moe_combine_add_rmsnorm's release_next_early).
  bool one_launch = false;
};
MoeSlots fused_moe_token_slots(const Tensor& x, const Tensor& router_logits, const MoeWeights& w,
                               const MoeRouting& routing, MoeWorkspace& workspace, cudaStream_t stream);
// The same as fused_moe with the path forced (tests and benchmarks compare the two).
void fused_moe(const Tensor& x, const Tensor& router_logits, const MoeWeights& w, const MoeRouting& routing,
               const Tensor& out, MoeWorkspace& workspace, cudaStream_t stream, MoePath path);

// CPU reference (fused_moe on CPU tensors calls it): moe_route_ref, then per (token, slot) with
// the weights dequantized exactly (mxfp8_dequantize_ref): gate/up accumulated in double,
// act = SiLU(gate) · up rounded to bf16 (the GPU paths hold act in bf16 between the two GEMMs),
// y = W2_e act in double, out = Σ weight · y rounded to bf16 once. The GPU prefill path also
// rounds gate/up and y to bf16 (GEMM outputs); both paths stay within bf16 error of this.
void fused_moe_ref(const Tensor& x, const Tensor& router_logits, const MoeWeights& w, const MoeRouting& routing,
                   const Tensor& out);

// Shapes of one call (checked: throws an Error naming the bad tensor and shape).
struct MoeShape {
  int64_t tokens, hidden, inter, experts;  // T, H, I (this rank's shard), E
};
MoeShape check_fused_moe_args(const Tensor& x, const Tensor& router_logits, const MoeWeights& w,
                              const MoeRouting& routing, const Tensor& out, const char* op);

}  // namespace mxmoe
