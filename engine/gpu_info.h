#pragma once
// Properties of the current GPU, read once per device and cached.
#include <cstdint>

namespace mxmoe {

struct GpuInfo {
  int sm_count = 0;
  int major = 0, minor = 0;  // compute capability
  int l2_bytes = 0;
  int max_smem_per_block = 0;  // opt-in limit (cudaFuncSetAttribute)
};

const GpuInfo& gpu_info();  // of the current device

// Blocks for a grid-stride kernel of `block_threads` threads per block that wants `threads`
// threads in all: enough to cover them, at most `blocks_per_sm` per SM (one or two full waves).
int grid_stride_blocks(int64_t threads, int block_threads, int blocks_per_sm = 8);

}  // namespace mxmoe
