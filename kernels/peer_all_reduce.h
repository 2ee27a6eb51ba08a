#pragma once
// One-shot all-reduce between the GPUs of one process over peer access (NVLink), for the small
// tensors of a decode step, where NCCL's fixed cost dominates (6.3 us for a 4 KB vector on two
// H200s against 4.5 us here, apps/bench-allreduce).
//
// Every rank pushes its whole tensor into each peer's slot for it, raises a flag on each peer,
// waits for every peer's flag on itself, and then sums the slots in rank order (rank 0 first, in
// fp32, rounded once), so every rank holds the same bits. The slots are double buffered by the
// parity of a per-block epoch that lives in device memory (so a CUDA graph replays it): a rank can
// push epoch e + 1 only after every peer has raised its flag for epoch e, and a peer raises that
// only after it finished reading epoch e - 1, so a push never overwrites slots a peer still reads.
// Every rank must run the same sequence of calls (the lockstep the runtime keeps).
#include <cuda_runtime.h>

#include <cstdint>

#include "engine/tensor.h"

namespace mxmoe {

constexpr int kPeerAllReduceMaxRanks = 8;
constexpr int kPeerAllReduceMaxBlocks = 64;

// What one rank's kernel needs. The slot, flag and epoch buffers are zeroed once before the first
// call and never touched by anything else.
struct PeerAllReduceRank {
  int rank = 0, world = 0;
  int64_t slot_bytes = 0;                       // capacity of one slot (a multiple of 16)
  char* slots[kPeerAllReduceMaxRanks] = {};     // rank p's slots on GPU p: [2 parities][world][slot_bytes]
  uint32_t* flags[kPeerAllReduceMaxRanks] = {};  // rank p's flags on GPU p: [kPeerAllReduceMaxBlocks][world]
  uint32_t* epochs = nullptr;                   // this rank's [kPeerAllReduceMaxBlocks], on its GPU
  const volatile uint32_t* abort = nullptr;     // host memory mapped into the device: non-zero ends the waits
};

// x = Σ over ranks of x, in place; x contiguous bf16 or f32 on this rank's GPU, x.nbytes() <= slot_bytes.
// Enqueued on `stream`, no host synchronization (capturable). After an abort the result is undefined.
void peer_all_reduce_sum(const PeerAllReduceRank& r, const Tensor& x, cudaStream_t stream);

}  // namespace mxmoe
