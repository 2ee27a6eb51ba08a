#pragma once
// Step arena: the device temporaries of a forward step without a driver call.
//
// One persistent device buffer per arena, handed out as a stack: an allocation takes the next
// 256-byte-aligned bytes; freeing the topmost one pops it (and any freed ones beneath it), so the
// C++ scoping of temporaries (locals die in reverse order) reuses memory as cudaMalloc/cudaFree
// would. Reuse is safe because a step runs on one stream: a kernel that reads freed memory was
// enqueued before the kernel that overwrites it.
//
// While a Scope is alive, device Allocations made on this thread (Tensor::empty on cuda) come
// from its arena. The outermost Scope of an arena starts a step:
//  - it checks that nothing from the previous step is alive: a step temporary that outlived its
//    step (a tensor kept in a member, a result held past the next step) would be overwritten, so
//    that is an Error naming how many and how large;
//  - it grows the buffer when the previous step overflowed it (the overflowing allocations went
//    to cudaMalloc, so a new shape costs one slow step, then none).
// The buffer counts as used GPU memory (device_memory_stats, the memory cap), and so do overflows.
//
// Buffers that a layer grows and keeps (a MoE workspace, a library handle's workspace) must not
// come from an arena: make them under Scope(nullptr), which suspends arenas on this thread.
//
// CUDA graphs: capture() marks a capture in progress. An allocation that does not fit then gets
// a placeholder address instead of a driver call (nothing runs during a capture) and the capture
// reports that it overflowed: discard that graph, let the next step grow the buffer, recapture.
// generation() changes whenever the buffer moves, which makes graphs captured before stale.
//
// Single-threaded: an arena serves the thread(s) that open its scopes one at a time.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "engine/memory.h"

namespace mxmoe {

class StepArena : public std::enable_shared_from_this<StepArena> {
 public:
  // device: the CUDA ordinal it serves (allocations on other devices bypass it).
  static std::shared_ptr<StepArena> create(int device);
  ~StepArena();
  StepArena(const StepArena&) = delete;
  StepArena& operator=(const StepArena&) = delete;

  class Scope {
   public:
    explicit Scope(StepArena* arena);  // nullptr: no arena (plain cudaMalloc) until this scope ends
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    StepArena* arena_;
    StepArena* previous_;
  };

  // Marks a graph capture: allocations never call the driver; overflowed() says whether one
  // did not fit.
  class Capture {
   public:
    explicit Capture(StepArena& arena);
    ~Capture();
    bool overflowed() const;

   private:
    StepArena& arena_;
  };

  static StepArena* active();  // of this thread, or nullptr

  int device() const { return device_; }
  size_t capacity() const;
  uint64_t generation() const { return generation_; }
  int64_t live_count() const { return live_count_; }  // arena allocations alive now (buffer + overflow)
  size_t high_water() const { return high_; }           // bytes the current step has needed so far

  // Where an allocation went; kept by the Allocation so it can give it back.
  enum class Placement : uint8_t { none, buffer, overflow, placeholder };
  // buffer/placeholder: returns the address; overflow: returns nullptr, the caller cudaMallocs.
  void* allocate(size_t bytes, Placement& placement);
  void release(void* data, size_t bytes, Placement placement);

 private:
  explicit StepArena(int device);
  void begin_step();

  struct Block {
    size_t offset, end;
    bool freed;
  };
  int device_;
  std::unique_ptr<Allocation> buffer_;
  std::vector<Block> blocks_;  // the stack, bottom first
  size_t top_ = 0;             // end of the topmost block
  size_t overflow_live_ = 0;   // bytes of live overflow allocations
  size_t high_ = 0;            // max over this step of top + overflow_live
  int64_t live_count_ = 0;
  int depth_ = 0;              // open scopes of this arena
  bool capturing_ = false, capture_overflowed_ = false;
  uint64_t generation_ = 0;
};

}  // namespace mxmoe
