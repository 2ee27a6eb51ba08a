#pragma once
// CUDA_CHECK(cudaMalloc(...)) throws mxmoe::Error naming the failed call, its error and file:line.
// CUDA_CHECK_LAUNCH() does the same for the last kernel launch.
#include <cuda_runtime.h>

#include "engine/error.h"

namespace mxmoe {

[[noreturn]] inline void cuda_fail(cudaError_t err, const char* call, const char* file, int line) {
  fail(call, " failed: ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ") at ", file, ":", line);
}

}  // namespace mxmoe

#define CUDA_CHECK(call)                                                         \
  do {                                                                           \
    cudaError_t mxmoe_err_ = (call);                                             \
    if (mxmoe_err_ != cudaSuccess) ::mxmoe::cuda_fail(mxmoe_err_, #call, __FILE__, __LINE__); \
  } while (0)

#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())
