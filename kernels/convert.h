#pragma once
// Element-wise dtype conversion (checkpoint dtype -> destination dtype, done on the GPU while
// loading) and the random fill behind --load-format dummy. Each has a CPU reference.
//
// convert_dtype: src and dst contiguous, same element count, dtypes f32/bf16/f16 (any pair;
// same dtype is a checked copy). Rounding is to nearest even. Non-finite inputs are counted
// (NaN/Inf in a weight is a load error), and converted like any value.
//
// fill_normal: values of normal(mean, std) from a counter-based generator, so the value of an
// element depends only on (seed, its index in the full tensor): a TP shard filled with its
// slice geometry holds exactly the slice of the full tensor, on any device, in any order.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "engine/tensor.h"
#include "kernels/hash.h"
#include "kernels/mxfp8_format.h"  // MXMOE_HD

namespace mxmoe {

// Where a contiguous destination [outer, length, inner] sits inside a full tensor
// [outer, full, inner]: elements begin..begin+length of dimension `full`.
struct FillGeometry {
  int64_t outer = 1, full = 1, begin = 0, length = 1, inner = 1;
};

struct NormalFill {
  uint64_t seed = 0;
  float mean = 0.f, std = 1.f;
  FillGeometry geometry;  // default: dst is the whole tensor (set outer·length·inner = numel)
};

// The generator, shared by the CPU reference and the kernel so both give the same bits.
// mix64 (kernels/hash.h) as a counter hash; the normal variate is an Irwin-Hall sum of eight
// 16-bit uniforms (bounded at ±4.9σ, mean 0, variance 1): integer arithmetic, then exact
// float steps (explicit fmaf, so no compiler contraction differs between host and device).
MXMOE_HD float normal_at(uint64_t seed, uint64_t index, float mean, float std) {
  const uint64_t a = mix64(seed ^ mix64(2 * index)), b = mix64(seed ^ mix64(2 * index + 1));
  int sum = 0;
  for (int k = 0; k < 4; ++k) sum += int((a >> (16 * k)) & 0xffff) + int((b >> (16 * k)) & 0xffff);
  // 2·sum − 2·E[sum] is an exact integer below 2^21; the constant is 1 / (2·sqrt(8·(65536²−1)/12)).
  const float z = float(2 * sum - 524280) * 9.344061825059267e-06f;
  return fmaf(z, std, mean);
}

// Geometry of the whole tensor of `numel` elements.
FillGeometry whole_tensor_geometry(int64_t numel);

// ---- CPU reference ----
int64_t convert_dtype_ref(const Tensor& src, const Tensor& dst);  // returns the non-finite count
int64_t count_nonfinite_ref(const Tensor& x);
void fill_normal_ref(const Tensor& dst, const NormalFill& fill);  // dst f32/bf16/f16

// ---- CUDA (asynchronous on `stream`) ----
// nonfinite_count: optional device int incremented by the number of NaN/Inf inputs.
void convert_dtype(const Tensor& src, const Tensor& dst, cudaStream_t stream, int* nonfinite_count = nullptr);
void count_nonfinite(const Tensor& x, cudaStream_t stream, int* nonfinite_count);
void fill_normal(const Tensor& dst, const NormalFill& fill, cudaStream_t stream);

}  // namespace mxmoe
