#pragma once
// Programmatic dependent launch (PDL), shared by every kernel of the decode step.
//
// A kernel launched with launch_pdl may start while the previous kernel on the stream is still
// running, so its launch latency and prologue hide under its predecessor's tail. The contract:
//  - before grid_dependency_wait() a kernel reads only what no earlier kernel of the step writes
//    (weights, constants); the wait returns once the previous kernel has finished and its
//    writes are visible;
//  - launch_dependents() comes after the wait, so when a kernel starts, every kernel before its
//    predecessor has finished: it may read their outputs before its own wait (the MoE down kernel
//    reads the routing two kernels back);
//  - except in a kernel whose successor reads nothing of the step before its own wait (a decode
//    GEMV loads only weights there): it may let the successor go at once
//    (release_dependents_and_wait(true)), so a GEMV's blocks become resident and issue their first
//    weight loads under this kernel's predecessor. Two do: the attention merge (o_proj follows) and
//    the MoE combine + norm (the qkv GEMV follows, or after the last layer the logit-row gather,
//    which waits first).
// All are no-ops in a kernel launched without the attribute, and below sm_90.
// MXMOE_PDL=0 in the environment turns the attribute off for every launch_pdl and the W8A16
// decode kernels; MXMOE_EARLY_DEPENDENTS=0 keeps every release after the wait (kernels/pdl_switch.h).
#include <cuda_runtime.h>

#include <utility>

#include "engine/cuda_check.h"
#include "kernels/pdl_switch.h"

namespace mxmoe {

__device__ __forceinline__ void grid_dependency_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// The wait, with the dependents let go before it (early: see the contract above) or after it.
__device__ __forceinline__ void release_dependents_and_wait(bool early) {
  if (early) launch_dependents();
  grid_dependency_wait();
  if (!early) launch_dependents();
}

// kernel<<<grid, block, smem, stream>>>(args...) with programmatic stream serialization (unless
// pdl_enabled() is off).
template <class... Params, class... Args>
void launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute pdl{};
  pdl.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  pdl.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = &pdl;
  cfg.numAttrs = pdl_enabled() ? 1 : 0;
  CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

}  // namespace mxmoe
