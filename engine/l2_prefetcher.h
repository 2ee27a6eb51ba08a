#pragma once
// Issues l2_prefetch (kernels/l2_prefetch.h) on a side stream forked from the step's stream, so
// the prefetch runs beside the step's kernels (also inside a captured CUDA graph); join() brings
// the side stream back before the step ends (a capture must end joined).
#include <span>

#include "engine/cuda_check.h"
#include "engine/stream.h"
#include "kernels/l2_prefetch.h"

namespace mxmoe {

class L2Prefetcher {
 public:
  // Prefetch starts once the work queued on `stream` so far has finished.
  void issue(std::span<const L2Range> ranges, cudaStream_t stream) {
    fork_.record(stream);
    CUDA_CHECK(cudaStreamWaitEvent(side_, fork_));
    l2_prefetch(ranges, side_);
    pending_ = true;
  }
  void join(cudaStream_t stream) {
    if (!pending_) return;
    join_.record(side_);
    CUDA_CHECK(cudaStreamWaitEvent(stream, join_));
    pending_ = false;
  }

 private:
  Stream side_;
  Event fork_{cudaEventDisableTiming}, join_{cudaEventDisableTiming};
  bool pending_ = false;
};

}  // namespace mxmoe
