// Embedding gather: one thread per 16 bytes (8 bf16) of an output row. Launched with programmatic
// dependent launch (kernels/pdl.cuh); it waits before reading anything, as the table may be an
// activation (the decoder gathers the rows whose logits are wanted with it).
#include <algorithm>

#include "kernels/embedding.h"
#include "kernels/pdl.cuh"

namespace mxmoe {

namespace {

__global__ void embedding_kernel(const int32_t* __restrict__ ids, const uint4* __restrict__ table, int64_t vocab_begin,
                                 int64_t rows, int64_t vecs_per_row, uint4* __restrict__ out, int64_t total) {
  grid_dependency_wait();
  launch_dependents();
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / vecs_per_row, v = i % vecs_per_row;
    const int64_t row = int64_t(ids[t]) - vocab_begin;
    out[i] = (row >= 0 && row < rows) ? table[row * vecs_per_row + v] : make_uint4(0, 0, 0, 0);
  }
}

}  // namespace

void embedding(const Tensor& ids, const Tensor& table, int64_t vocab_begin, const Tensor& out, cudaStream_t stream) {
  detail::check_embedding_args("embedding", ids, table, out, Device::cuda);
  const int64_t vecs_per_row = table.size(1) / 8, total = ids.size(0) * vecs_per_row;
  if (total == 0) return;
  const int threads = 256;
  const int blocks = int(std::min<int64_t>((total + threads - 1) / threads, 4096));
  launch_pdl(embedding_kernel, dim3(blocks), dim3(threads), 0, stream, ids.data_as<const int32_t>(),
             table.data_as<const uint4>(), vocab_begin, table.size(0), vecs_per_row, out.data_as<uint4>(), total);
}

}  // namespace mxmoe
