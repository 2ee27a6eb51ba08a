#pragma once
// Fixtures of the decode W8A16 GPU tests: random MXFP8 weights drawn directly in the quantized
// form (every e4m3 code but NaN, scales from a chosen range), fast enough for real model shapes.
#include <cuda_runtime.h>

#include <random>

#include "engine/cuda_check.h"
#include "kernels/mxfp8.h"
#include "tests/test_util.h"

namespace mxmoe::testing {

// CPU MXFP8 tensor of `shape` ([..., K]): uniform e4m3 codes (NaN codes replaced by ±448), scale
// bytes uniform in [scale_lo, scale_hi] (127 = 1.0).
inline MxTensor random_mxfp8(const Shape& shape, std::mt19937_64& rng, int scale_lo = 117, int scale_hi = 125) {
  MxTensor q = mxfp8_empty(shape, Device::cpu);
  auto* e = q.elems.data_as<uint8_t>();
  const int64_t n = q.elems.numel();
  for (int64_t i = 0; i < n; i += 8) {
    uint64_t bits = rng();
    for (int64_t j = i; j < i + 8 && j < n; ++j, bits >>= 8) {
      const uint8_t b = uint8_t(bits);
      e[j] = (b & 0x7f) == kE4M3Nan ? uint8_t(b & 0xfe) : b;
    }
  }
  std::uniform_int_distribution<int> scale(scale_lo, scale_hi);
  auto* s = q.scales.data_as<uint8_t>();
  for (int64_t i = 0; i < q.scales.numel(); ++i) s[i] = uint8_t(scale(rng));
  return q;
}

inline MxTensor to_device(const MxTensor& q) { return {q.elems.to(Device::cuda), q.scales.to(Device::cuda)}; }

// A CUDA tensor filled with 0xFF bytes (NaN in bf16 and f32): an element the kernel does not write fails.
inline Tensor poisoned(const Shape& shape, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype, Device::cuda);
  CUDA_CHECK(cudaMemset(t.data(), 0xff, t.nbytes()));
  return t;
}

}  // namespace mxmoe::testing
