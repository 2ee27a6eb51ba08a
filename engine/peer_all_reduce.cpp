#include "engine/peer_all_reduce.h"

#include "engine/cuda_check.h"
#include "engine/device_guard.h"
#include "engine/error.h"
#include "engine/log.h"

namespace mxmoe {

namespace {

// Peer access from every device to every other one; false (logged) where a pair has none.
bool enable_peer_access(const std::vector<int>& devices) {
  for (int d : devices)
    for (int peer : devices) {
      if (peer == d) continue;
      int can = 0;
      CUDA_CHECK(cudaDeviceCanAccessPeer(&can, d, peer));
      if (!can) {
        log_info("all-reduce: GPU ", d, " cannot access GPU ", peer, "'s memory; NCCL for every size");
        return false;
      }
      CUDA_CHECK(cudaSetDevice(d));
      if (const cudaError_t e = cudaDeviceEnablePeerAccess(peer, 0); e == cudaErrorPeerAccessAlreadyEnabled)
        (void)cudaGetLastError();  // enabled before (by another group): fine
      else
        CUDA_CHECK(e);
    }
  return true;
}

}  // namespace

std::unique_ptr<PeerAllReduce> PeerAllReduce::create(const std::vector<int>& devices, int64_t slot_bytes) {
  const int world = int(devices.size());
  if (world < 2 || world > kPeerAllReduceMaxRanks) return nullptr;
  MXMOE_CHECK(slot_bytes > 0 && slot_bytes % 16 == 0, "peer all-reduce: slot size ", slot_bytes,
              " bytes is not a positive multiple of 16");
  DeviceGuard guard;
  if (!enable_peer_access(devices)) return nullptr;

  std::unique_ptr<PeerAllReduce> p(new PeerAllReduce());
  void* abort_flag = nullptr;
  CUDA_CHECK(cudaHostAlloc(&abort_flag, sizeof(uint32_t), cudaHostAllocPortable | cudaHostAllocMapped));
  p->abort_ = static_cast<volatile uint32_t*>(abort_flag);
  *p->abort_ = 0;
  void* abort_on_device = nullptr;
  CUDA_CHECK(cudaHostGetDevicePointer(&abort_on_device, abort_flag, 0));  // the same address under UVA

  const size_t slots = size_t(2 * world) * size_t(slot_bytes);
  const size_t flags = sizeof(uint32_t) * kPeerAllReduceMaxBlocks * size_t(world);
  const size_t epochs = sizeof(uint32_t) * kPeerAllReduceMaxBlocks;
  p->ranks_.resize(size_t(world));
  for (int i = 0; i < world; ++i) {
    CUDA_CHECK(cudaSetDevice(devices[size_t(i)]));
    auto& buffer = p->buffers_.emplace_back(std::make_unique<Allocation>(slots + flags + epochs, MemoryKind::device));
    CUDA_CHECK(cudaMemset(buffer->data(), 0, buffer->size()));
    char* base = static_cast<char*>(buffer->data());
    for (PeerAllReduceRank& r : p->ranks_) {  // every rank sees GPU i's slots and flags
      r.slots[i] = base;
      r.flags[i] = reinterpret_cast<uint32_t*>(base + slots);
    }
    PeerAllReduceRank& r = p->ranks_[size_t(i)];
    r.rank = i;
    r.world = world;
    r.slot_bytes = slot_bytes;
    r.epochs = reinterpret_cast<uint32_t*>(base + slots + flags);
    r.abort = static_cast<const volatile uint32_t*>(abort_on_device);
  }
  for (int d : devices) {  // the zeroed buffers before any kernel reads them from a peer
    CUDA_CHECK(cudaSetDevice(d));
    CUDA_CHECK(cudaDeviceSynchronize());
  }
  return p;
}

PeerAllReduce::~PeerAllReduce() {
  buffers_.clear();  // cudaFree waits for kernels still using them
  if (abort_) cudaFreeHost(const_cast<uint32_t*>(abort_));
}

}  // namespace mxmoe
