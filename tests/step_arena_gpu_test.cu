// The step arena (engine/step_arena.h): steps allocate from one buffer without driver calls once
// it has grown, memory is reused in stack order, the buffer counts as used GPU memory, and a
// temporary that outlives its step is an Error at the next step.
#include <gtest/gtest.h>

#include "engine/step_arena.h"
#include "engine/tensor.h"
#include "test_util.h"

namespace mxmoe {
namespace {

using testing::error_of;

size_t in_use() { return device_memory_stats(current_device()).in_use; }

TEST(StepArenaGpu, GrowsOnceThenAllocatesInsideItsBuffer) {
  MXMOE_REQUIRE_GPU();
  const auto arena = StepArena::create(current_device());
  const size_t before = in_use();
  const auto step = [&] {
    const StepArena::Scope scope(arena.get());
    const Tensor a = Tensor::empty({1000}, DType::f32, Device::cuda);
    const Tensor b = Tensor::empty({3, 1000}, DType::bf16, Device::cuda);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data()) % 256, 0u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % 256, 0u);
    return arena->live_count();
  };
  EXPECT_EQ(step(), 2);  // first step: the buffer is empty, both overflow to cudaMalloc
  EXPECT_EQ(arena->capacity(), 0u);
  EXPECT_EQ(in_use(), before);  // overflows were freed
  const uint64_t generation = arena->generation();
  EXPECT_EQ(step(), 2);  // second step: the buffer grew at its start, no overflow
  EXPECT_GE(arena->capacity(), 4000u + 6000u);
  EXPECT_NE(arena->generation(), generation);
  EXPECT_EQ(in_use(), before + arena->capacity());  // the buffer is counted as used, once
  const size_t used = in_use();
  const uint64_t grown = arena->generation();
  step();
  EXPECT_EQ(in_use(), used);
  EXPECT_EQ(arena->generation(), grown);
}

TEST(StepArenaGpu, ReusesMemoryInStackOrder) {
  MXMOE_REQUIRE_GPU();
  const auto arena = StepArena::create(current_device());
  { const StepArena::Scope warm(arena.get()); Tensor::empty({1 << 20}, DType::u8, Device::cuda); }
  const StepArena::Scope scope(arena.get());
  void* first = nullptr;
  {
    const Tensor a = Tensor::empty({1000}, DType::u8, Device::cuda);
    first = a.data();
  }
  const Tensor b = Tensor::empty({500}, DType::u8, Device::cuda);
  EXPECT_EQ(b.data(), first);  // a was on top: freed, its memory reused
  Tensor c = Tensor::empty({100}, DType::u8, Device::cuda);
  Tensor d = Tensor::empty({100}, DType::u8, Device::cuda);
  void* c_at = c.data();
  c = Tensor();  // not on top: its memory waits for d
  const Tensor e = Tensor::empty({100}, DType::u8, Device::cuda);
  EXPECT_NE(e.data(), c_at);
  EXPECT_GT(e.data(), d.data());
}

TEST(StepArenaGpu, TemporaryThatOutlivesItsStepIsAnError) {
  MXMOE_REQUIRE_GPU();
  const auto arena = StepArena::create(current_device());
  Tensor kept;
  {
    const StepArena::Scope scope(arena.get());
    kept = Tensor::empty({256}, DType::f32, Device::cuda);
  }
  const std::string message = error_of([&] { const StepArena::Scope next(arena.get()); });
  EXPECT_NE(message.find("still alive"), std::string::npos) << message;
  EXPECT_NE(message.find("1 temporaries"), std::string::npos) << message;
  kept = Tensor();
  EXPECT_EQ(error_of([&] { const StepArena::Scope next(arena.get()); }), "(no error)");
}

TEST(StepArenaGpu, NullScopeAndNestedScopes) {
  MXMOE_REQUIRE_GPU();
  const auto arena = StepArena::create(current_device());
  const StepArena::Scope outer(arena.get());
  Tensor persistent;
  {
    const StepArena::Scope none(nullptr);  // e.g. a workspace a layer keeps
    persistent = Tensor::empty({64}, DType::f32, Device::cuda);
    EXPECT_EQ(StepArena::active(), nullptr);
  }
  EXPECT_EQ(StepArena::active(), arena.get());
  EXPECT_EQ(arena->live_count(), 0);
  const Tensor t = Tensor::empty({64}, DType::f32, Device::cuda);
  {
    const StepArena::Scope inner(arena.get());  // nested: no new step, t may stay alive
    EXPECT_EQ(arena->live_count(), 1);
  }
  EXPECT_EQ(arena->live_count(), 1);
}

TEST(StepArenaGpu, CaptureNeverCallsTheDriverAndReportsOverflow) {
  MXMOE_REQUIRE_GPU();
  const auto arena = StepArena::create(current_device());
  const size_t before = in_use();
  {
    const StepArena::Scope scope(arena.get());
    const StepArena::Capture capture(*arena);
    const Tensor a = Tensor::empty({1 << 20}, DType::u8, Device::cuda);
    EXPECT_NE(a.data(), nullptr);
    EXPECT_TRUE(capture.overflowed());
    EXPECT_EQ(in_use(), before);  // a placeholder, not an allocation
  }
  const StepArena::Scope scope(arena.get());  // grows to what the capture needed
  EXPECT_GE(arena->capacity(), size_t(1) << 20);
  const StepArena::Capture capture(*arena);
  const Tensor a = Tensor::empty({1 << 20}, DType::u8, Device::cuda);
  EXPECT_FALSE(capture.overflowed());
}

}  // namespace
}  // namespace mxmoe
