#pragma once
// The in-process CPU communicator: `size` simulated ranks, one thread each, sharing memory. CI uses
// it to check the tensor-parallel sharding math on the CPU backend.
//
// all_reduce_sum is deterministic: every element is summed in f32 in rank order (x0 + x1 + ...)
// and rounded once to the tensor's dtype, so all ranks get bit-identical results. Collectives block
// until every rank has arrived. Calls that disagree across ranks (collective, dtype, element count)
// throw mxmoe::Error on every rank, naming the collective and each rank's tensor; the group stays
// usable after such an error. A rank thread that fails must call abort() so the others are woken
// with an Error instead of waiting for it; a timeout is the last resort.
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/communicator.h"

namespace mxmoe {

struct CpuCommunicatorOptions {
  // How long a rank waits for the others inside one collective before the group is aborted.
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};
};

class CpuCommunicator final : public Communicator {
 public:
  // `size` linked communicators; element i is rank i's, to be used from rank i's thread only.
  static std::vector<std::unique_ptr<CpuCommunicator>> create_group(int size, CpuCommunicatorOptions options = {});

  int rank() const override { return rank_; }
  int size() const override;

  // Host tensors (Device::cpu); `stream` is ignored. all_reduce_sum: bf16 or f32. all_gather: any
  // dtype; `in` may be `out`'s own rank slice (in place), otherwise they must not overlap.
  void all_reduce_sum(const Tensor& x, cudaStream_t stream) override;
  void all_gather(const Tensor& in, const Tensor& out, cudaStream_t stream) override;

  // Fails the whole group: every rank waiting in, or later entering, a collective throws an Error
  // carrying `reason`. Safe from any thread; the first reason is kept.
  void abort(const std::string& reason);

  struct Group;  // shared by the ranks of one group (cpu_communicator.cpp)
  struct Call;   // one rank's arguments to one collective

 private:
  CpuCommunicator(std::shared_ptr<Group> group, int rank) : group_(std::move(group)), rank_(rank) {}
  void collective(Call call);

  std::shared_ptr<Group> group_;
  int rank_;
};

// Runs fn(rank's communicator) on one thread per rank and joins them. When a rank throws, the
// group is aborted (so no rank waits forever) and the first exception thrown is rethrown here:
// the root cause, not the "group aborted" errors it caused on the other ranks.
void run_ranks(const std::vector<std::unique_ptr<CpuCommunicator>>& comms,
               const std::function<void(CpuCommunicator&)>& fn);

}  // namespace mxmoe
