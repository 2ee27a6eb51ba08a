#pragma once
// Restores the calling thread's current CUDA device on scope exit.
#include <cuda_runtime.h>

#include "engine/cuda_check.h"

namespace mxmoe {

class DeviceGuard {
 public:
  DeviceGuard() { CUDA_CHECK(cudaGetDevice(&prev_)); }
  ~DeviceGuard() { cudaSetDevice(prev_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
};

}  // namespace mxmoe
