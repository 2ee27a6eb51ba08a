#pragma once
// Helpers of the loader tests (CPU and GPU): expected values, and a WeightSet that poisons its
// destinations so bytes the loader never wrote fail the comparison.
#include <cstring>
#include <initializer_list>
#include <vector>

#include "engine/error.h"
#include "kernels/convert.h"
#include "loader/weight_loader.h"
#include "loader/weight_set.h"

namespace mxmoe::testing {

// The values of a CPU tensor (any strides) converted to `dtype`, contiguous: what a load must deliver.
inline Tensor converted(const Tensor& t, DType dtype) {
  Tensor contiguous = Tensor::empty(t.shape(), t.dtype(), Device::cpu);
  contiguous.copy_from(t);
  Tensor out = Tensor::empty(t.shape(), dtype, Device::cpu);
  convert_dtype_ref(contiguous, out);
  return out;
}

// Calls fn(what) once per staging geometry, set in `options`: every staging size x buffer count,
// with 1 and 4 copy threads; `what` names the geometry for failure messages.
template <class Fn>
void for_each_staging(LoadOptions& options, std::initializer_list<size_t> staging_sizes,
                      std::initializer_list<int> buffer_counts, Fn&& fn) {
  for (size_t staging : staging_sizes)
    for (int buffers : buffer_counts)
      for (int threads : {1, 4}) {
        options.staging_bytes = staging;
        options.staging_buffers = buffers;
        options.copy_threads = threads;
        fn(cat("staging ", staging, " x ", buffers, ", ", threads, " threads"));
      }
}

// Fills every destination with 0xff bytes (NaN in bf16/f16/f32) when loading begins; can be told
// to refuse to begin, an error in the middle of a load.
class PoisonedSet : public WeightSet {
 public:
  using WeightSet::WeightSet;
  bool refuse = false;
  void begin_loading() override {
    MXMOE_CHECK(!refuse, loadable_name(), ": refusing to begin");
    WeightSet::begin_loading();
    for (size_t i = 0; i < weight_specs().size(); ++i) {
      Tensor dest = weight_dest(i);
      Tensor poison = Tensor::empty(dest.shape(), dest.dtype(), Device::cpu);
      std::memset(poison.data(), 0xff, poison.nbytes());
      dest.copy_from(poison);
    }
  }
};

}  // namespace mxmoe::testing
