#include "engine/step_arena.h"

#include <algorithm>

#include "engine/error.h"

namespace mxmoe {

namespace {

constexpr size_t kAlign = 256;         // what cudaMalloc guarantees, and the kernels' vector loads need
constexpr size_t kGrain = size_t(2) << 20;  // buffer sizes are multiples of 2 MiB
constexpr double kMiB = 1024.0 * 1024.0;

thread_local StepArena* g_active = nullptr;

size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

}  // namespace

std::shared_ptr<StepArena> StepArena::create(int device) { return std::shared_ptr<StepArena>(new StepArena(device)); }

StepArena::StepArena(int device) : device_(device) {}

StepArena::~StepArena() = default;

StepArena* StepArena::active() { return g_active; }

size_t StepArena::capacity() const { return buffer_ ? buffer_->size() : 0; }

void StepArena::begin_step() {
  MXMOE_CHECK(live_count_ == 0, "step arena: ", live_count_, " temporaries of the previous step (",
              double(top_ + overflow_live_) / kMiB,
              " MiB) are still alive at the start of the next one; a tensor made during a step was kept past it "
              "(copy what must outlive a step, or make persistent buffers under StepArena::Scope(nullptr))");
  if (high_ > capacity()) {
    // Grow with some slack so a slightly larger step does not grow it again. The old buffer's
    // cudaFree waits for the device, so no kernel still uses it.
    const size_t bytes = align_up(high_ + high_ / 8, kGrain);
    StepArena* const outer = g_active;
    g_active = nullptr;  // the buffer itself is plain device memory
    buffer_.reset();
    try {
      buffer_ = std::make_unique<Allocation>(bytes, MemoryKind::device);
    } catch (...) {
      g_active = outer;
      throw;
    }
    g_active = outer;
    ++generation_;
  }
  blocks_.clear();
  top_ = 0;
  high_ = 0;
}

void* StepArena::allocate(size_t bytes, Placement& placement) {
  const size_t offset = align_up(top_, kAlign), end = offset + bytes;
  if (end <= capacity()) {
    blocks_.push_back({offset, end, false});
    top_ = end;
    high_ = std::max(high_, top_ + overflow_live_);
    ++live_count_;
    placement = Placement::buffer;
    return static_cast<char*>(buffer_->data()) + offset;
  }
  high_ = std::max(high_, end + overflow_live_);
  ++live_count_;
  overflow_live_ += bytes;
  if (capturing_) {
    // Nothing executes during a capture: any aligned address keeps host-side checks happy, and
    // the capture is discarded.
    capture_overflowed_ = true;
    placement = Placement::placeholder;
    return buffer_ ? buffer_->data() : reinterpret_cast<void*>(kAlign);
  }
  placement = Placement::overflow;
  return nullptr;
}

void StepArena::release(void* data, size_t bytes, Placement placement) {
  --live_count_;
  if (placement != Placement::buffer) {  // overflow or placeholder
    overflow_live_ -= bytes;
    return;
  }
  const size_t offset = size_t(static_cast<char*>(data) - static_cast<char*>(buffer_->data()));
  // Usually the topmost block: search from the top.
  for (size_t i = blocks_.size(); i-- > 0;) {
    if (blocks_[i].offset != offset || blocks_[i].freed) continue;
    blocks_[i].freed = true;
    break;
  }
  while (!blocks_.empty() && blocks_.back().freed) blocks_.pop_back();
  top_ = blocks_.empty() ? 0 : blocks_.back().end;
}

StepArena::Scope::Scope(StepArena* arena) : arena_(arena), previous_(g_active) {
  if (arena_) {
    if (arena_->depth_ == 0) arena_->begin_step();
    ++arena_->depth_;
  }
  g_active = arena_;
}

StepArena::Scope::~Scope() {
  g_active = previous_;
  if (arena_) --arena_->depth_;
}

StepArena::Capture::Capture(StepArena& arena) : arena_(arena) {
  arena_.capturing_ = true;
  arena_.capture_overflowed_ = false;
}

StepArena::Capture::~Capture() { arena_.capturing_ = false; }

bool StepArena::Capture::overflowed() const { return arena_.capture_overflowed_; }

}  // namespace mxmoe
