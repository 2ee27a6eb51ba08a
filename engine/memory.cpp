#include "engine/memory.h"

#include <array>
#include <atomic>
#include <cstdlib>

#include "engine/cuda_check.h"
#include "engine/step_arena.h"

namespace mxmoe {

namespace {

constexpr int kMaxDevices = 64;

struct Counters {
  std::atomic<size_t> in_use{0}, peak{0}, limit{0};
};

Counters& counters(int device) {
  static std::array<Counters, kMaxDevices> all;
  MXMOE_CHECK(device >= 0 && device < kMaxDevices, "CUDA device ordinal ", device, " out of range");
  return all[device];
}

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// Reserve bytes against the device's cap before calling cudaMalloc.
void reserve(int device, size_t bytes) {
  Counters& c = counters(device);
  const size_t now = c.in_use.fetch_add(bytes) + bytes;
  const size_t limit = c.limit.load();
  if (limit != 0 && now > limit) {
    c.in_use.fetch_sub(bytes);
    fail("GPU memory limit exceeded on device ", device, ": allocating ", bytes / kGiB, " GiB with ",
         (now - bytes) / kGiB, " GiB in use and a limit of ", limit / kGiB, " GiB");
  }
  size_t peak = c.peak.load();
  while (now > peak && !c.peak.compare_exchange_weak(peak, now)) {}
}

}  // namespace

Allocation::Allocation(size_t bytes, MemoryKind kind) : bytes_(bytes), kind_(kind) {
  if (bytes == 0) return;
  switch (kind) {
    case MemoryKind::host:
      data_ = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
      MXMOE_CHECK(data_, "out of host memory allocating ", bytes, " bytes");
      break;
    case MemoryKind::pinned:
      CUDA_CHECK(cudaMallocHost(&data_, bytes));
      break;
    case MemoryKind::device: {
      CUDA_CHECK(cudaGetDevice(&device_));
      if (StepArena* arena = StepArena::active(); arena && arena->device() == device_) {
        StepArena::Placement placement = StepArena::Placement::none;
        data_ = arena->allocate(bytes, placement);
        arena_ = arena->shared_from_this();
        placement_ = uint8_t(placement);
        if (data_) break;  // inside the arena's buffer (counted there), or a capture placeholder
      }
      try {
        reserve(device_, bytes);
      } catch (...) {
        release_from_arena();
        throw;
      }
      const cudaError_t err = cudaMalloc(&data_, bytes);
      if (err != cudaSuccess) {
        counters(device_).in_use.fetch_sub(bytes);
        release_from_arena();
        fail("cudaMalloc of ", bytes, " bytes on device ", device_, " failed: ", cudaGetErrorString(err));
      }
      break;
    }
  }
}

void Allocation::release_from_arena() {
  if (arena_) arena_->release(data_, bytes_, StepArena::Placement(placement_));
  arena_.reset();
}

Allocation::~Allocation() {
  if (!data_) return;
  if (arena_ && StepArena::Placement(placement_) != StepArena::Placement::overflow) {
    release_from_arena();  // not ours to free
    return;
  }
  release_from_arena();
  switch (kind_) {
    case MemoryKind::host: std::free(data_); break;
    case MemoryKind::pinned: cudaFreeHost(data_); break;
    case MemoryKind::device:
      cudaFree(data_);  // no throw from a destructor; cudaFree frees on the owning context
      counters(device_).in_use.fetch_sub(bytes_);
      break;
  }
}

DeviceMemoryStats device_memory_stats(int device) {
  const Counters& c = counters(device);
  return {c.in_use.load(), c.peak.load(), c.limit.load()};
}

void set_device_memory_limit(int device, size_t bytes) { counters(device).limit.store(bytes); }

void reset_device_memory_peak(int device) {
  Counters& c = counters(device);
  c.peak.store(c.in_use.load());
}

int current_device() {
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return count;
}

bool cuda_available() { return cuda_device_count() > 0; }

}  // namespace mxmoe
