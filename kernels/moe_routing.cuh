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

struct SoftmaxStats {
  float max, sum;  // max of the logits, Σ exp(logit - max)
};

// One whole warp: the softmax statistics of l[0:E] (lane j sums experts j, j+32, ..., then an xor
// tree: the order every router kernel uses, so their weights agree bit for bit).
__device__ __forceinline__ SoftmaxStats softmax_stats(const float* l, int n_experts) {
  const int lane = threadIdx.x & 31;
  float max = -INFINITY;
  for (int e = lane; e < n_experts; e += 32) max = fmaxf(max, l[e]);
  for (int off = 16; off; off >>= 1) max = fmaxf(max, __shfl_xor_sync(0xffffffffu, max, off));
  float sum = 0.f;
  for (int e = lane; e < n_experts; e += 32) sum += expf(l[e] - max);
  for (int off = 16; off; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  return {max, sum};
}

// One whole warp, lane s < top_k holding slot s's expert: writes ids[0:top_k] and weights[0:top_k].
__device__ __forceinline__ void write_slots(const float* l, SoftmaxStats st, int expert, int top_k, bool renormalize,
                                            int32_t* ids, float* weights) {
  const int lane = threadIdx.x & 31;
  const float w = lane < top_k ? expf(l[expert] - st.max) / st.sum : 0.f;
  float selected_sum = 0.f;  // summed in slot order, like the reference
  for (int k = 0; k < top_k; ++k) selected_sum += __shfl_sync(0xffffffffu, w, k);
  if (lane < top_k) {
    ids[lane] = expert;
    weights[lane] = renormalize ? w / selected_sum : w;
  }
}

// One whole warp routes one token: l = its logits [E]; writes ids[0:top_k], weights[0:top_k].
// Lane j holds experts j, j+32, ...; each arg-max round is a warp reduction.
__device__ __forceinline__ void route_token(const float* __restrict__ l, int n_experts, int top_k, bool renormalize,
                                            int32_t* ids, float* weights) {
  const int lane = threadIdx.x & 31;
  const SoftmaxStats st = softmax_stats(l, n_experts);
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
  write_slots(l, st, mine.expert, top_k, renormalize, ids, weights);
}

// Expert e's place in the order of `beats` among l[0:E]: the experts beating it (larger key, or an
// equal key and a lower index). The ranks are a permutation of 0..E-1, so rank < top_k is the
// top-k slot; one thread per expert finds all slots at once (small T·E: see moe_permute.cu).
// Four counts so that consecutive experts' compares do not wait on one another's sums (one count
// made the 128 experts of Qwen3-30B-A3B a chain of ~2 us).
__device__ __forceinline__ int rank_of(const float* l, int n_experts, int e) {
  const float key = rank_key(l[e]);
  int rank[4] = {};
  const auto count = [&](int j, int& r) {
    const float other = rank_key(l[j]);
    r += int(other > key) | (int(other == key) & int(j < e));  // no branches
  };
  int j = 0;
#pragma unroll 2
  for (; j + 4 <= n_experts; j += 4)
#pragma unroll
    for (int u = 0; u < 4; ++u) count(j + u, rank[u]);
  for (; j < n_experts; ++j) count(j, rank[0]);
  return rank[0] + rank[1] + rank[2] + rank[3];
}

}  // namespace mxmoe::moe_detail
