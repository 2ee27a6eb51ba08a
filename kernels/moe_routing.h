#pragma once
// MoE router: router_logits [T, E] f32 -> for each token its top_k experts and their weights.
//   p = softmax(logits[t]) over all E experts, in fp32
//   ids = the top_k experts by logit (the softmax is monotonic, so this is the top_k by p without
//         exp rounding creating ties); equal logits: the lowest expert index first; slots are
//         ordered by descending logit
//   weights = p[ids], divided by their sum when renormalize (Mixtral, Qwen3-MoE norm_topk_prob)
// A NaN logit still yields valid, distinct ids in [0, E) (its weights are NaN), so later kernels
// never index out of range.
#include <cuda_runtime.h>

#include "engine/tensor.h"

namespace mxmoe {

constexpr int kMoeMaxTopK = 32;
constexpr int kMoeMaxExperts = 1024;

// logits [T, E] f32; topk_ids [T, top_k] i32; topk_weights [T, top_k] f32. 1 <= top_k <= min(E, 32).
void moe_route_ref(const Tensor& logits, int top_k, bool renormalize, const Tensor& topk_ids,
                   const Tensor& topk_weights);
// The same on CUDA tensors (asynchronous on `stream`, no host sync); E <= 1024.
void moe_route(const Tensor& logits, int top_k, bool renormalize, const Tensor& topk_ids, const Tensor& topk_weights,
               cudaStream_t stream);

// Shared argument checks (CPU and CUDA): throws an Error naming the op and the bad shape.
void check_moe_route_args(const Tensor& logits, int top_k, const Tensor& topk_ids, const Tensor& topk_weights,
                          Device device, const char* op);

}  // namespace mxmoe
