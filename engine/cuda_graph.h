#pragma once
// RAII CUDA graph: the work a function enqueues on a stream, captured once and replayed.
#include <cuda_runtime.h>

#include <utility>

#include "engine/cuda_check.h"

namespace mxmoe {

class CudaGraph {
 public:
  CudaGraph() = default;
  ~CudaGraph() { reset(); }
  CudaGraph(CudaGraph&& o) noexcept : exec_(std::exchange(o.exec_, nullptr)) {}
  CudaGraph& operator=(CudaGraph&& o) noexcept {
    if (this != &o) {
      reset();
      exec_ = std::exchange(o.exec_, nullptr);
    }
    return *this;
  }

  // Captures what fn() enqueues on `stream` (thread-local mode: this thread may make no
  // synchronizing or allocating driver call meanwhile; other threads may). If fn throws, the
  // capture is ended and discarded before the exception propagates.
  template <class Fn>
  static CudaGraph capture(cudaStream_t stream, Fn&& fn) {
    CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    cudaGraph_t graph = nullptr;
    try {
      fn();
    } catch (...) {
      cudaStreamEndCapture(stream, &graph);
      if (graph) cudaGraphDestroy(graph);
      (void)cudaGetLastError();
      throw;
    }
    CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    CudaGraph out;
    const cudaError_t err = cudaGraphInstantiate(&out.exec_, graph, 0);
    cudaGraphDestroy(graph);
    CUDA_CHECK(err);
    return out;
  }

  bool valid() const { return exec_ != nullptr; }
  void launch(cudaStream_t stream) const { CUDA_CHECK(cudaGraphLaunch(exec_, stream)); }
  void reset() {
    if (exec_) cudaGraphExecDestroy(exec_);
    exec_ = nullptr;
  }

 private:
  cudaGraphExec_t exec_ = nullptr;
};

}  // namespace mxmoe
