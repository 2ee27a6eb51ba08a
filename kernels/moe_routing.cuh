#pragma once
// Device side of the MoE router (see moe_routing.h), shared by the router kernel and the fused
// small-batch router + permutation kernel (moe_permute.cu).
#include <cstdint>

namespace mxmoe::moe_detail {

struct Candidate {
  float key;   // the logit, NaN read as -inf
  int expert;  // -1: none
};

__device__ __forceinline__ float rank_key(float logit) { return logit != logit ? -INFINITY : logit; }

// a beats b: a larger key, then a lower index (the reference's rule); any candidate beats none.
__device__ __forceinline__ bool beats(Candidate a, Candidate b) {
  if (a.expert < 0) return false;
  return b.expert < 0 || a.key > b.key || (a.key == b.key && a.expert < b.expert);
}

// One whole warp routes one token: l = its logits [E]; writes ids[0:top_k], weights[0:top_k].
// Lane j holds experts j, j+32, ...; softmax max/sum and each arg-max round are warp reductions.
__device__ __forceinline__ void route_token(const float* __restrict__ l, int n_experts, int top_k, bool renormalize,
                                            int32_t* __restrict__ ids, float* __restrict__ weights) {
  const int lane = threadIdx.x & 31;
  float max = -INFINITY;
  for (int e = lane; e < n_experts; e += 32) max = fmaxf(max, l[e]);
  for (int off = 16; off; off >>= 1) max = fmaxf(max, __shfl_xor_sync(0xffffffffu, max, off));
  float sum = 0.f;
  for (int e = lane; e < n_experts; e += 32) sum += expf(l[e] - max);
  for (int off = 16; off; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);

  uint32_t taken = 0;       // bit j: expert lane + 32 j already chosen
  Candidate mine{0.f, -1};  // slot `lane`'s choice
  for (int k = 0; k < top_k; ++k) {
    Candidate best{0.f, -1};
    for (int j = 0, e = lane; e < n_experts; ++j, e += 32)
      if (!(taken >> j & 1u) && beats(Candidate{rank_key(l[e]), e}, best)) best = Candidate{rank_key(l[e]), e};
    for (int off = 16; off; off >>= 1) {
      const Candidate other{__shfl_xor_sync(0xffffffffu, best.key, off),
                            __shfl_xor_sync(0xffffffffu, best.expert, off)};
      if (beats(other, best)) best = other;
    }
    if (best.expert % 32 == lane) taken |= 1u << (best.expert / 32);
    if (lane == k) mine = best;
  }
  const float w = lane < top_k ? expf(l[mine.expert] - max) / sum : 0.f;
  float selected_sum = 0.f;  // summed in slot order, like the reference
  for (int k = 0; k < top_k; ++k) selected_sum += __shfl_sync(0xffffffffu, w, k);
  if (lane < top_k) {
    ids[lane] = mine.expert;
    weights[lane] = renormalize ? w / selected_sum : w;
  }
}

}  // namespace mxmoe::moe_detail
