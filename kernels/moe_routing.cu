// CUDA MoE router: one warp per token. Lane l holds the logits of experts l, l+32, ...; softmax
// max/sum and each of the top_k arg-max rounds are warp reductions. Matches moe_routing_ref.cpp:
// the same ids (same comparison rule), weights within float rounding of the softmax sum order.
#include "engine/cuda_check.h"
#include "kernels/moe_routing.h"

namespace mxmoe {

namespace {

constexpr int kWarpsPerBlock = 8;

struct Candidate {
  float key;   // the logit, NaN read as -inf
  int expert;  // -1: none
};

__device__ float rank_key(float logit) { return logit != logit ? -INFINITY : logit; }

// a beats b: a larger key, then a lower index (the reference's rule); any candidate beats none.
__device__ bool beats(Candidate a, Candidate b) {
  if (a.expert < 0) return false;
  return b.expert < 0 || a.key > b.key || (a.key == b.key && a.expert < b.expert);
}

__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    route_kernel(const float* __restrict__ logits, int64_t n_tokens, int n_experts, int top_k, bool renormalize,
                 int32_t* __restrict__ topk_ids, float* __restrict__ topk_weights) {
  const int lane = threadIdx.x & 31;
  const int64_t t = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (t >= n_tokens) return;  // whole warps leave together
  const float* l = logits + t * n_experts;

  float max = -INFINITY;
  for (int e = lane; e < n_experts; e += 32) max = fmaxf(max, l[e]);
  for (int off = 16; off; off >>= 1) max = fmaxf(max, __shfl_xor_sync(0xffffffffu, max, off));
  float sum = 0.f;
  for (int e = lane; e < n_experts; e += 32) sum += expf(l[e] - max);
  for (int off = 16; off; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);

  uint32_t taken = 0;  // bit j: expert lane + 32 j already chosen
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
    topk_ids[t * top_k + lane] = mine.expert;
    topk_weights[t * top_k + lane] = renormalize ? w / selected_sum : w;
  }
}

}  // namespace

void moe_route(const Tensor& logits, int top_k, bool renormalize, const Tensor& topk_ids, const Tensor& topk_weights,
               cudaStream_t stream) {
  check_moe_route_args(logits, top_k, topk_ids, topk_weights, Device::cuda, "moe_route");
  const int64_t n_tokens = logits.size(0);
  if (n_tokens == 0) return;
  const int64_t blocks = (n_tokens + kWarpsPerBlock - 1) / kWarpsPerBlock;
  route_kernel<<<unsigned(blocks), kWarpsPerBlock * 32, 0, stream>>>(
      logits.data_as<const float>(), n_tokens, int(logits.size(1)), top_k, renormalize, topk_ids.data_as<int32_t>(),
      topk_weights.data_as<float>());
  CUDA_CHECK_LAUNCH();
}

}  // namespace mxmoe
