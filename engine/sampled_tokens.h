#pragma once
// The tokens of a sampling step, kept where the next decode step can read them before the host
// has: two slots used in turn, each a device buffer (the sampler's output, then the next step's
// input) and a pinned host copy that arrives asynchronously. So the generation loop can launch
// step n+1 before it waits for step n's tokens.
#include <cuda_runtime.h>

#include <array>
#include <cstddef>
#include <memory>
#include <span>

#include "engine/stream.h"
#include "engine/tensor.h"

namespace mxmoe {

class SampledTokens {
 public:
  explicit SampledTokens(Device device);

  // Slot `slot`'s buffer for b tokens: i32 [b] on the device (made outside the step arena, grown
  // as needed: it outlives the step that writes it).
  Tensor buffer(int slot, int64_t b);
  // Enqueues the copy of the slot's b tokens to the host after the work on `stream` so far.
  void start_read(int slot, int64_t b, cudaStream_t stream);
  // Waits for that copy only (not for work enqueued after it) and returns the tokens.
  std::span<const int32_t> finish_read(int slot);
  // Host memory of `bytes` for the inputs of the slot's sampling step, pinned on the GPU: a copy
  // from pageable memory may wait for the work before it on the stream, which would stall the
  // host behind the step it just launched. Reused by the slot's next step: once this step's
  // tokens were read, its copies are done.
  std::byte* staging(int slot, size_t bytes);

 private:
  struct Slot {
    Tensor device, host;  // i32 [capacity]: on the device (CPU backend: the same tensor), pinned
    Tensor inputs;        // u8: staging() (pinned on the GPU)
    int64_t count = 0;    // tokens of the last start_read
    std::unique_ptr<Event> copied;
  };
  Device device_;
  std::array<Slot, 2> slots_;
};

}  // namespace mxmoe
