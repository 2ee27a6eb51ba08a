#pragma once
// The NCCL communicator: one rank on one GPU. Collectives enqueue on the caller's stream and return
// at once, with no host synchronization, so they can be captured in a CUDA graph. Every NCCL error
// is an mxmoe::Error naming the operation, the rank and NCCL's own message.
//
// Three ways to build them:
//   NcclGroup({0, 1, 2, 3})                one process drives all its GPUs (one thread per GPU)
//   nccl_group_for_node(dist_init, gpus)   one process per node, ids exchanged over TCP
//   NcclCommunicator(id, rank, size, gpu)  one process per GPU, id distributed by the caller
#include <nccl.h>

#include <atomic>
#include <memory>
#include <vector>

#include "engine/communicator.h"
#include "engine/peer_all_reduce.h"
#include "engine/tcp_bootstrap.h"

namespace mxmoe {

ncclUniqueId nccl_unique_id();  // ncclGetUniqueId, checked
BootstrapBlob to_blob(const ncclUniqueId& id);  // the 128 bytes tcp_bootstrap carries
ncclUniqueId nccl_id_from_blob(const BootstrapBlob& blob);

class NcclCommunicator final : public Communicator {
 public:
  // Rank `rank` of `size` on GPU `device` (blocks until all `size` ranks have joined). Leaves the
  // calling thread's current device as it was.
  NcclCommunicator(const ncclUniqueId& id, int rank, int size, int device);
  ~NcclCommunicator() override;  // ncclCommDestroy
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int device() const { return device_; }
  ncclComm_t handle() const { return comm_; }

  // Device tensors on this rank's GPU; `stream` must belong to that GPU. all_reduce_sum: bf16 or
  // f32; results agree across ranks. Up to the peer slot size, in a group that holds the whole
  // world with peer access (NcclGroup), the one-shot peer kernel sums in rank order (the CPU
  // communicator's order); above it, NCCL's order. all_gather: any dtype; in place when `in` is
  // out's rank slice.
  void all_reduce_sum(const Tensor& x, cudaStream_t stream) override;
  void all_gather(const Tensor& in, const Tensor& out, cudaStream_t stream) override;

  // ncclCommAbort: NCCL kernels of this communicator already enqueued on the GPU exit, so a rank
  // waiting for a peer that failed between two collectives is released; later collectives throw.
  // May be called from another thread than the one using the communicator.
  // Releases this rank's peer all-reduce kernels too (and the group's other ranks').
  void abort();

 private:
  friend class NcclGroup;
  void check_usable(const char* op) const;

  NcclCommunicator(ncclComm_t comm, int rank, int size, int device)
      : comm_(comm), rank_(rank), size_(size), device_(device) {}

  ncclComm_t comm_ = nullptr;
  int rank_, size_, device_;
  PeerAllReduce* peer_ = nullptr;  // the group's, for small all-reduces; null: NCCL for all
  std::atomic<bool> aborted_{false};  // then comm_ is freed and never used again
};

// The communicators of one process's GPUs, created together in one NCCL group (one thread may
// create several) and finalized together on destruction (sequential ncclCommDestroy of several
// communicators from one thread could otherwise wait on each other). When the group is the whole
// world (one process, two or more GPUs, every pair with peer access), all-reduces up to
// PeerAllReduce::kDefaultSlotBytes take the one-shot peer kernel (0.7x of NCCL's time on a decode
// step's vectors); MXMOE_ALL_REDUCE=nccl keeps NCCL for every size (peer, the default, or nccl).
class NcclGroup {
 public:
  // Ranks first_rank .. first_rank + devices.size() - 1 of world_size, rank first_rank + i on devices[i].
  NcclGroup(const ncclUniqueId& id, int world_size, int first_rank, const std::vector<int>& devices);
  // One process holds the whole world: rank i on devices[i].
  explicit NcclGroup(const std::vector<int>& devices);
  ~NcclGroup();
  NcclGroup(NcclGroup&&) = default;
  NcclGroup& operator=(NcclGroup&&) = delete;

  int local_size() const { return int(comms_.size()); }
  NcclCommunicator& local(int i) const { return *comms_.at(size_t(i)); }  // the rank on devices[i]
  void abort();  // every local rank's abort(): one failing rank releases the others
  bool peer_all_reduce() const { return peer_ != nullptr; }

 private:
  std::unique_ptr<PeerAllReduce> peer_;  // before comms_: they point to it
  std::vector<std::unique_ptr<NcclCommunicator>> comms_;
};

// Multi-node: node `init.node_rank` drives `devices` (the same count on every node) as global ranks
// node_rank * devices.size() + i. Node 0 makes the ncclUniqueId and sends it over TCP
// (engine/tcp_bootstrap.h); nnodes == 1 needs no network.
NcclGroup nccl_group_for_node(const DistInit& init, const std::vector<int>& devices);

}  // namespace mxmoe
