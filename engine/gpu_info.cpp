#include "engine/gpu_info.h"

#include <algorithm>
#include <array>
#include <mutex>

#include "engine/cuda_check.h"

namespace mxmoe {

const GpuInfo& gpu_info() {
  static std::array<GpuInfo, 64> cache;
  static std::array<std::once_flag, 64> once;
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  MXMOE_CHECK(device >= 0 && device < 64, "CUDA device ordinal ", device, " out of range");
  std::call_once(once[device], [&] {
    GpuInfo& g = cache[device];
    CUDA_CHECK(cudaDeviceGetAttribute(&g.sm_count, cudaDevAttrMultiProcessorCount, device));
    CUDA_CHECK(cudaDeviceGetAttribute(&g.major, cudaDevAttrComputeCapabilityMajor, device));
    CUDA_CHECK(cudaDeviceGetAttribute(&g.minor, cudaDevAttrComputeCapabilityMinor, device));
    CUDA_CHECK(cudaDeviceGetAttribute(&g.l2_bytes, cudaDevAttrL2CacheSize, device));
    CUDA_CHECK(cudaDeviceGetAttribute(&g.max_smem_per_block, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  });
  return cache[device];
}

int grid_stride_blocks(int64_t threads, int block_threads, int blocks_per_sm) {
  const int64_t full = (threads + block_threads - 1) / block_threads;
  return int(std::max<int64_t>(1, std::min<int64_t>(full, int64_t(gpu_info().sm_count) * blocks_per_sm)));
}

}  // namespace mxmoe
