#include "engine/sampled_tokens.h"

#include <algorithm>

#include "engine/error.h"
#include "engine/step_arena.h"

namespace mxmoe {

SampledTokens::SampledTokens(Device device) : device_(device) {}

Tensor SampledTokens::buffer(int slot, int64_t b) {
  MXMOE_CHECK(slot == 0 || slot == 1, "SampledTokens: slot ", slot);
  Slot& s = slots_[size_t(slot)];
  if (!s.device.defined() || s.device.numel() < b) {
    const StepArena::Scope persistent(nullptr);
    s.device = Tensor::empty({b}, DType::i32, device_);
    s.host = device_ == Device::cuda ? Tensor::empty_pinned({b}, DType::i32) : s.device;
    if (device_ == Device::cuda && !s.copied) s.copied = std::make_unique<Event>(cudaEventDisableTiming);
  }
  return s.device.slice(0, b);
}

void SampledTokens::start_read(int slot, int64_t b, cudaStream_t stream) {
  Slot& s = slots_[size_t(slot)];
  MXMOE_CHECK(s.device.defined() && b <= s.device.numel(), "SampledTokens: reading ", b, " tokens of slot ", slot,
              " before they were sampled");
  s.count = b;
  if (device_ != Device::cuda) return;  // the CPU sampler wrote them in place
  s.host.slice(0, b).copy_from(s.device.slice(0, b), stream);
  s.copied->record(stream);
}

std::span<const int32_t> SampledTokens::finish_read(int slot) {
  Slot& s = slots_[size_t(slot)];
  if (device_ == Device::cuda) s.copied->synchronize();
  return {s.host.data_as<const int32_t>(), size_t(s.count)};
}

std::byte* SampledTokens::staging(int slot, size_t bytes) {
  MXMOE_CHECK(slot == 0 || slot == 1, "SampledTokens: slot ", slot);
  Slot& s = slots_[size_t(slot)];
  if (!s.inputs.defined() || s.inputs.nbytes() < bytes) {
    const int64_t n = int64_t(std::max<size_t>(bytes, 4096));
    s.inputs = device_ == Device::cuda ? Tensor::empty_pinned({n}, DType::u8) : Tensor::empty({n}, DType::u8, Device::cpu);
  }
  return s.inputs.data_as<std::byte>();
}

}  // namespace mxmoe
