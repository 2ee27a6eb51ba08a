#pragma once
// Raising a kernel's dynamic shared-memory limit, which a launch above the default 48 KiB needs,
// once per device.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "engine/cuda_check.h"
#include "engine/memory.h"

namespace mxmoe {

// Sets kKernel's cudaFuncAttributeMaxDynamicSharedMemorySize to `bytes` the first time it runs on
// the current device (every call for one kernel passes the same bytes), and whatever else
// `also(kKernel)` sets then; later calls cost a load and a test.
template <auto kKernel, class Also>
void allow_dynamic_smem(int bytes, Also also) {
  static std::atomic<uint64_t> done{0};  // bit d: device d (mod 64) is set up
  const uint64_t bit = uint64_t(1) << (current_device() & 63);
  if (done.load(std::memory_order_acquire) & bit) return;
  CUDA_CHECK(cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  also(kKernel);
  done.fetch_or(bit, std::memory_order_release);
}
template <auto kKernel>
void allow_dynamic_smem(int bytes) {
  allow_dynamic_smem<kKernel>(bytes, [](auto) {});
}

}  // namespace mxmoe
