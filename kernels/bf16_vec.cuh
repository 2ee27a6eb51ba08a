#pragma once
// Device helpers for bf16 vectors: 16-byte loads/stores of 8 values as fp32, and the bf16
// rounding step that Hugging Face applies after each bf16 tensor operation.
#include <cuda_bf16.h>

#include <cstdint>

namespace mxmoe {

__device__ __forceinline__ float round_bf16(float v) { return __bfloat162float(__float2bfloat16(v)); }

// 8 bf16 at p (16-byte aligned) -> f32.
__device__ __forceinline__ void load_bf16x8(const __nv_bfloat16* p, float (&f)[8]) {
  union { uint4 raw; __nv_bfloat162 pair[4]; } u;
  u.raw = *reinterpret_cast<const uint4*>(p);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __bfloat1622float2(u.pair[i]);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}

// f32 -> 8 bf16 at p (16-byte aligned), round to nearest even.
__device__ __forceinline__ void store_bf16x8(__nv_bfloat16* p, const float (&f)[8]) {
  union { uint4 raw; __nv_bfloat162 pair[4]; } u;
#pragma unroll
  for (int i = 0; i < 4; ++i) u.pair[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
  *reinterpret_cast<uint4*>(p) = u.raw;
}

}  // namespace mxmoe
