#pragma once
// Token embedding lookup, vocab-parallel: this rank holds rows [vocab_begin, vocab_begin + V_shard)
// of the table; tokens outside that range get zero rows (the caller all-reduces across ranks).
// Ids are validated against the full vocabulary on the host before they reach the device.
#include <cuda_runtime.h>

#include "engine/tensor.h"

namespace mxmoe {

// ids i32 [T]; table bf16 [V_shard, H]; out bf16 [T, H]. CUDA: asynchronous, graph-capturable.
void embedding(const Tensor& ids, const Tensor& table, int64_t vocab_begin, const Tensor& out, cudaStream_t stream);
void embedding_ref(const Tensor& ids, const Tensor& table, int64_t vocab_begin, const Tensor& out);  // CPU tensors

namespace detail {
void check_embedding_args(const char* op, const Tensor& ids, const Tensor& table, const Tensor& out, Device device);
}  // namespace detail

}  // namespace mxmoe
