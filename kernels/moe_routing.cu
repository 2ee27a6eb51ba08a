// CUDA MoE router: one warp per token (moe_routing.cuh). Matches moe_routing_ref.cpp:
// the same ids (same comparison rule), weights within float rounding of the softmax sum order.
#include "engine/cuda_check.h"
#include "kernels/moe_routing.h"
#include "kernels/moe_routing.cuh"

namespace mxmoe {

namespace {

constexpr int kWarpsPerBlock = 8;

__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    route_kernel(const float* __restrict__ logits, int64_t n_tokens, int n_experts, int top_k, bool renormalize,
                 int32_t* __restrict__ topk_ids, float* __restrict__ topk_weights) {
  const int64_t t = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (t >= n_tokens) return;  // whole warps leave together
  moe_detail::route_token(logits + t * n_experts, n_experts, top_k, renormalize, topk_ids + t * top_k,
                          topk_weights + t * top_k);
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
