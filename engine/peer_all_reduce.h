#pragma once
// The buffers of the one-shot peer all-reduce (kernels/peer_all_reduce.h) for the GPUs of one
// process: each GPU's slots, flags and epochs, peer access between every pair, and the host flag
// that releases kernels waiting for a peer that will not come (abort).
//
//   auto peer = PeerAllReduce::create({0, 1});      // null where a pair has no peer access
//   peer->all_reduce_sum(i, x, stream);            // on GPU i's thread; x.nbytes() <= slot_bytes()
#include <cuda_runtime.h>

#include <memory>
#include <vector>

#include "engine/memory.h"
#include "kernels/peer_all_reduce.h"

namespace mxmoe {

class PeerAllReduce {
 public:
  // Up to 128 KB ([16, 4096] bf16) the kernel took 0.68-0.73x of NCCL's time on two H200s; from
  // 256 KB (64 blocks) 4-6x longer, for a reason not found yet (apps/bench-allreduce).
  static constexpr int64_t kDefaultSlotBytes = 128 << 10;

  // Null, with the reason logged, if `devices` has fewer than 2 or more than kPeerAllReduceMaxRanks
  // GPUs or some pair cannot access each other's memory. Leaves the current device as it was.
  static std::unique_ptr<PeerAllReduce> create(const std::vector<int>& devices, int64_t slot_bytes = kDefaultSlotBytes);
  ~PeerAllReduce();
  PeerAllReduce(const PeerAllReduce&) = delete;
  PeerAllReduce& operator=(const PeerAllReduce&) = delete;

  int64_t slot_bytes() const { return ranks_.front().slot_bytes; }

  // Rank i (on devices[i]; its device current): x = Σ over ranks of x, enqueued on `stream`.
  void all_reduce_sum(int i, const Tensor& x, cudaStream_t stream) const { peer_all_reduce_sum(ranks_.at(size_t(i)), x, stream); }

  // Kernels waiting for a peer return (their results undefined); so do all later ones. Any thread.
  void abort() { *abort_ = 1; }

 private:
  PeerAllReduce() = default;

  std::vector<PeerAllReduceRank> ranks_;
  std::vector<std::unique_ptr<Allocation>> buffers_;  // per GPU: slots, then flags, then epochs
  volatile uint32_t* abort_ = nullptr;                // pinned, mapped into every GPU
};

}  // namespace mxmoe
