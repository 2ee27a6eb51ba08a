#pragma once
// Properties of the current GPU, read once per device and cached.
namespace mxmoe {

struct GpuInfo {
  int sm_count = 0;
  int major = 0, minor = 0;  // compute capability
  int l2_bytes = 0;
  int max_smem_per_block = 0;  // opt-in limit (cudaFuncSetAttribute)
};

const GpuInfo& gpu_info();  // of the current device

}  // namespace mxmoe
