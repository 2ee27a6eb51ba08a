#include "kernels/l2_prefetch.h"

#include <cstdint>

#include "engine/cuda_check.h"
#include "engine/error.h"

namespace mxmoe {

namespace {

constexpr int kThreads = 32;
constexpr size_t kLaneBytes = 4096;                   // one bulk prefetch per lane
constexpr size_t kBlockBytes = kThreads * kLaneBytes;  // 128 KB per block: a 10 MB GEMV spreads over ~80 SMs

struct Ranges {
  uintptr_t begin[kL2PrefetchMaxRanges];  // 16-byte aligned
  uint64_t bytes[kL2PrefetchMaxRanges];   // multiples of 16
  uint64_t first_block[kL2PrefetchMaxRanges + 1];
  int count;
};

__global__ void __launch_bounds__(kThreads) l2_prefetch_kernel(Ranges r) {
  int i = 0;
  while (i + 1 < r.count && blockIdx.x >= r.first_block[i + 1]) ++i;
  const uint64_t offset = (blockIdx.x - r.first_block[i]) * kBlockBytes + threadIdx.x * kLaneBytes;
  if (offset >= r.bytes[i]) return;
  const uint64_t bytes = r.bytes[i] - offset < kLaneBytes ? r.bytes[i] - offset : kLaneBytes;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(r.begin[i] + offset), "r"(uint32_t(bytes))
               : "memory");
#endif
}

}  // namespace

void l2_prefetch(std::span<const L2Range> ranges, cudaStream_t stream) {
  MXMOE_CHECK(ranges.size() <= size_t(kL2PrefetchMaxRanges), "l2_prefetch: ", ranges.size(), " ranges, at most ",
              kL2PrefetchMaxRanges);
  Ranges r{};
  uint64_t blocks = 0;
  for (const L2Range& range : ranges) {
    const uintptr_t p = reinterpret_cast<uintptr_t>(range.ptr);
    const uintptr_t begin = (p + 15) & ~uintptr_t(15), end = (p + range.bytes) & ~uintptr_t(15);
    if (!range.ptr || end <= begin) continue;
    r.begin[r.count] = begin;
    r.bytes[r.count] = end - begin;
    r.first_block[r.count] = blocks;
    blocks += (r.bytes[r.count] + kBlockBytes - 1) / kBlockBytes;
    ++r.count;
  }
  r.first_block[r.count] = blocks;
  if (blocks == 0) return;
  l2_prefetch_kernel<<<unsigned(blocks), kThreads, 0, stream>>>(r);
  CUDA_CHECK_LAUNCH();
}

}  // namespace mxmoe
