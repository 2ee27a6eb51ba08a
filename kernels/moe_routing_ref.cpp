// CPU reference of the MoE router (the oracle of kernels/moe_routing.cu).
#include <cmath>
#include <algorithm>
#include <vector>

#include "engine/error.h"
#include "kernels/moe_routing.h"

namespace mxmoe {

namespace {

float rank_key(float logit) { return std::isnan(logit) ? -INFINITY : logit; }

}  // namespace

void check_moe_route_args(const Tensor& logits, int top_k, const Tensor& topk_ids, const Tensor& topk_weights,
                          Device device, const char* op) {
  MXMOE_CHECK(logits.dim() == 2 && logits.dtype() == DType::f32 && logits.is_contiguous(), op,
              ": router logits must be contiguous f32 [T, E], got ", dtype_name(logits.dtype()), " ",
              shape_str(logits.shape()));
  const int64_t t = logits.size(0), e = logits.size(1);
  MXMOE_CHECK(e >= 1 && e <= kMoeMaxExperts, op, ": ", e, " experts (supported: 1..", kMoeMaxExperts, ")");
  MXMOE_CHECK(top_k >= 1 && top_k <= kMoeMaxTopK && top_k <= e, op, ": top_k = ", top_k, " with ", e,
              " experts (supported: 1..min(E, ", kMoeMaxTopK, "))");
  MXMOE_CHECK(topk_ids.dtype() == DType::i32 && topk_ids.is_contiguous() && topk_ids.numel() == t * top_k, op,
              ": topk_ids must be contiguous i32 with T*top_k = ", t * top_k, " elements, got ",
              dtype_name(topk_ids.dtype()), " ", shape_str(topk_ids.shape()));
  MXMOE_CHECK(topk_weights.dtype() == DType::f32 && topk_weights.is_contiguous() && topk_weights.numel() == t * top_k,
              op, ": topk_weights must be contiguous f32 with T*top_k = ", t * top_k, " elements, got ",
              dtype_name(topk_weights.dtype()), " ", shape_str(topk_weights.shape()));
  MXMOE_CHECK(logits.device() == device && topk_ids.device() == device && topk_weights.device() == device, op,
              ": all tensors must be on the ", device == Device::cpu ? "CPU" : "GPU");
}

void moe_route_ref(const Tensor& logits, int top_k, bool renormalize, const Tensor& topk_ids,
                   const Tensor& topk_weights) {
  check_moe_route_args(logits, top_k, topk_ids, topk_weights, Device::cpu, "moe_route_ref");
  const int64_t n_tokens = logits.size(0), n_experts = logits.size(1);
  std::vector<bool> taken(static_cast<size_t>(n_experts));
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float* l = logits.data_as<const float>() + t * n_experts;
    int32_t* ids = topk_ids.data_as<int32_t>() + t * top_k;
    float* w = topk_weights.data_as<float>() + t * top_k;
    float max = -INFINITY;
    for (int64_t e = 0; e < n_experts; ++e) max = std::fmax(max, l[e]);
    float sum = 0.f;
    for (int64_t e = 0; e < n_experts; ++e) sum += std::exp(l[e] - max);
    std::fill(taken.begin(), taken.end(), false);
    float selected_sum = 0.f;
    for (int k = 0; k < top_k; ++k) {
      // Best untaken expert: larger logit (NaN ranks as -inf), then lower index.
      int64_t best = -1;
      for (int64_t e = 0; e < n_experts; ++e)
        if (!taken[size_t(e)] && (best < 0 || rank_key(l[e]) > rank_key(l[best]))) best = e;
      taken[size_t(best)] = true;
      ids[k] = int32_t(best);
      w[k] = std::exp(l[best] - max) / sum;
      selected_sum += w[k];
    }
    if (renormalize)
      for (int k = 0; k < top_k; ++k) w[k] /= selected_sum;
  }
}

}  // namespace mxmoe
