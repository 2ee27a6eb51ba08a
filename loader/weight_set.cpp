#include "loader/weight_set.h"

#include "engine/error.h"
#include "loader/weight_loader.h"

namespace mxmoe {

WeightSet::WeightSet(std::string name, std::vector<WeightSpec> specs, Device device, DType dtype, Mode mode)
    : name_(std::move(name)), specs_(std::move(specs)), device_(device), dtype_(dtype), mode_(mode) {
  if (mode_ != Mode::mxfp8) return;
  for (const WeightSpec& spec : specs_) {
    const Shape s = shard_shape(spec);
    MXMOE_CHECK(!s.empty() && s.back() % kMxBlock == 0, name_, ": ", spec.name, " ", shape_str(s),
                ": MXFP8 needs the input size (last dimension) divisible by ", kMxBlock);
  }
  MXMOE_CHECK(device_ == Device::cuda, name_, ": MXFP8 weights are quantized on the GPU");
  stream_ = std::make_unique<Stream>();
}

void WeightSet::begin_loading() {
  loaded_.clear();
  for (const WeightSpec& spec : specs_) loaded_.push_back(Tensor::empty(shard_shape(spec), dtype_, device_));
}

Tensor WeightSet::weight_dest(size_t i) { return loaded_.at(i); }

void WeightSet::finish_loading() {
  if (mode_ != Mode::mxfp8) return;
  for (size_t i = 0; i < specs_.size(); ++i) {
    quantized_.push_back(mxfp8_empty(loaded_[i].shape(), Device::cuda));
    mxfp8_quantize_weight(loaded_[i], quantized_.back(), ScaleRule::rceil, *stream_, specs_[i].name);
    loaded_[i] = Tensor();  // frees the full-precision copy at once
  }
  loaded_.clear();
}

size_t WeightSet::quantized_bytes() const {
  size_t bytes = 0;
  for (const MxTensor& q : quantized_) bytes += q.elems.nbytes() + q.scales.nbytes();
  return bytes;
}

}  // namespace mxmoe
