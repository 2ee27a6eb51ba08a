#pragma once
// WeightSet: the simplest Loadable, a named list of weights kept as loaded (on the CPU or the
// GPU, in a chosen float dtype) or quantized to MXFP8 on finish_loading, freeing the
// full-precision copy as real layers do. The loader's tests and benchmark use it; models
// build their own layers against engine/loadable.h.
#include <memory>
#include <string>
#include <vector>

#include "engine/loadable.h"
#include "engine/stream.h"
#include "kernels/mxfp8.h"

namespace mxmoe {

class WeightSet : public Loadable {
 public:
  enum class Mode { keep, mxfp8 };
  // mxfp8 needs the GPU and K = the last dimension of each (sliced) weight divisible by 32.
  WeightSet(std::string name, std::vector<WeightSpec> specs, Device device, DType dtype, Mode mode);

  std::string loadable_name() const override { return name_; }
  std::vector<WeightSpec> weight_specs() const override { return specs_; }
  void begin_loading() override;
  Tensor weight_dest(size_t i) override;
  void finish_loading() override;

  const Tensor& weight(size_t i) const { return loaded_.at(i); }          // Mode::keep
  const MxTensor& quantized(size_t i) const { return quantized_.at(i); }  // Mode::mxfp8
  size_t quantized_bytes() const;  // elements + scales of every weight

 private:
  std::string name_;
  std::vector<WeightSpec> specs_;
  Device device_;
  DType dtype_;
  Mode mode_;
  std::vector<Tensor> loaded_;      // the sliced shape of each spec; freed after quantizing
  std::vector<MxTensor> quantized_;
  std::unique_ptr<Stream> stream_;
};

}  // namespace mxmoe
