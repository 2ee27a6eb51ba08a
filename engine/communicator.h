#pragma once
// The collectives tensor parallelism needs, behind one interface with two implementations:
// NCCL between GPUs (engine/nccl_communicator.h) and an in-process CPU communicator between
// threads (engine/cpu_communicator.h), so CI checks the sharding math with simulated ranks.
//
// Every rank calls the same collectives in the same order (SPMD). A GPU communicator enqueues on
// `stream` and returns at once (capturable in a CUDA graph); the CPU one works on host tensors,
// ignores `stream`, and returns when the result is ready.
#include <cuda_runtime.h>

#include "engine/tensor.h"

namespace mxmoe {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // x = Σ over ranks of x, in place. x contiguous, bf16 or f32, on this rank's device.
  virtual void all_reduce_sum(const Tensor& x, cudaStream_t stream) = 0;

  // out = the ranks' `in` concatenated along dim 0 in rank order: in [n, ...] -> out [size · n, ...].
  // Both contiguous, same dtype, on this rank's device.
  virtual void all_gather(const Tensor& in, const Tensor& out, cudaStream_t stream) = 0;
};

}  // namespace mxmoe
