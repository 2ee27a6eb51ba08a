#pragma once
// Per-element math of the attention block's QK-norm (per-head RMSNorm) and rope on bf16 head rows,
// rounded as Hugging Face rounds bf16 tensors. Shared by the fused rope kernel (kernels/rope.cu)
// and the decode attention prologue (kernels/attention.cu), so both give the same bits.
#include <cuda_bf16.h>

#include "kernels/bf16_vec.cuh"

namespace mxmoe::qk_rope {

// acc + the squares of 8 values, in rmsnorm_kernel's order.
__device__ __forceinline__ float sum_squares8(const float (&f)[8], float acc) {
#pragma unroll
  for (int p = 0; p < 4; ++p) acc = fmaf(f[2 * p], f[2 * p], fmaf(f[2 * p + 1], f[2 * p + 1], acc));
  return acc;
}

// A normalized element: bf16(weight · bf16(x · inv_rms)).
__device__ __forceinline__ float normed(float x, float inv_rms, float weight) {
  return round_bf16(weight * round_bf16(x * inv_rms));
}

// Rope's cos and sin at position pos for one inverse frequency, times the attention scaling,
// each rounded to bf16.
__device__ __forceinline__ void factors(float pos, float inv_freq, float scaling, float& c, float& s) {
  sincosf(pos * inv_freq, &s, &c);
  c = round_bf16(c * scaling);
  s = round_bf16(s * scaling);
}

// Element i of the lower half: x·c − x[i + h]·s; of the upper half: x·c + x[i − h]·s (partner = the other).
__device__ __forceinline__ float rotated(float x, float partner, bool lower, float c, float s) {
  return round_bf16(x * c) + round_bf16((lower ? -partner : partner) * s);
}

}  // namespace mxmoe::qk_rope
