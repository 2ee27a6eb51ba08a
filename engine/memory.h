#pragma once
// RAII memory: pageable host, pinned host (for async copies) and device memory.
// Device allocations are counted per GPU (bytes in use, high-water mark) and may be capped
// (--gpu-memory-limit): an allocation past the cap throws instead of allocating.
// While a step arena is active on this thread (engine/step_arena.h), device allocations for its
// GPU come from the arena's buffer instead of cudaMalloc.
#include <cstddef>
#include <cstdint>
#include <memory>

namespace mxmoe {

enum class MemoryKind : uint8_t { host, pinned, device };
class StepArena;

class Allocation {
 public:
  Allocation(size_t bytes, MemoryKind kind);  // bytes == 0 is allowed (data() is null)
  ~Allocation();
  Allocation(const Allocation&) = delete;
  Allocation& operator=(const Allocation&) = delete;

  void* data() const { return data_; }
  size_t size() const { return bytes_; }
  MemoryKind kind() const { return kind_; }
  int device() const { return device_; }

 private:
  void release_from_arena();

  void* data_ = nullptr;
  size_t bytes_ = 0;
  MemoryKind kind_;
  int device_ = -1;  // CUDA ordinal for device memory
  std::shared_ptr<StepArena> arena_;  // the step arena that placed it, if any
  uint8_t placement_ = 0;             // StepArena::Placement
};

struct DeviceMemoryStats {
  size_t in_use = 0;  // bytes allocated through Allocation now
  size_t peak = 0;    // high-water mark since the last reset
  size_t limit = 0;   // cap, 0 = none
};

DeviceMemoryStats device_memory_stats(int device);
void set_device_memory_limit(int device, size_t bytes);  // 0 removes the cap
void reset_device_memory_peak(int device);
int current_device();
int cuda_device_count();  // visible GPUs; 0 without a device or driver
bool cuda_available();    // a usable GPU is present

}  // namespace mxmoe
