#pragma once
// L2 prefetch of weights a later kernel will read: the decode step's small GEMVs (~8 MB each at
// Qwen3-30B-A3B) spend about half their time ramping up DRAM traffic; issued on a side stream
// while latency-bound kernels (rope, attention, routing) leave DRAM idle, their weights are in
// L2 when they start. A hint: it never changes a result.
#include <cuda_runtime.h>

#include <cstddef>
#include <span>

namespace mxmoe {

struct L2Range {
  const void* ptr = nullptr;  // device memory
  size_t bytes = 0;
};

constexpr int kL2PrefetchMaxRanges = 4;

// Issues cp.async.bulk.prefetch.L2 over the ranges (at most kL2PrefetchMaxRanges, empty ones
// skipped; bytes outside the 16-byte-aligned interior of a range are not fetched).
void l2_prefetch(std::span<const L2Range> ranges, cudaStream_t stream);

}  // namespace mxmoe
