#pragma once
// MXFP8 number formats, shared by the CPU reference and the CUDA kernels (see DESIGN.md):
// blocks of 32 consecutive elements along K share one E8M0 scale 2^(s-127); elements are
// FP8 E4M3 (e4m3fn: ±448 max, 0x7F/0xFF = NaN, no Inf), x ≈ e4m3 · 2^(s-127).
#include <cstdint>

#if defined(__CUDACC__)
#define MXMOE_HD __host__ __device__ __forceinline__
#else
#define MXMOE_HD inline
#endif

namespace mxmoe {

constexpr int kMxBlock = 32;            // elements per scale
constexpr float kE4M3Max = 448.f;       // 1.75 · 2^8
constexpr uint8_t kE8M0Nan = 0xFF;      // scale of a block that held NaN/Inf
constexpr uint8_t kE4M3Nan = 0x7F;

// How a block's scale is chosen from its amax.
//  rceil: the smallest power of two >= amax/448 (the reference "RCEIL" rule): nothing saturates.
//  ocp:   OCP MX v1.0: 2^(floor(log2 amax) - 8); the largest elements can exceed 448 and clamp.
enum class ScaleRule : uint8_t { rceil, ocp };

MXMOE_HD uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  return __builtin_bit_cast(uint32_t, f);
#endif
}

MXMOE_HD float f32_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  return __builtin_bit_cast(float, u);
#endif
}

// 2^e as an exact float for e in [-149, 127] (subnormals included).
MXMOE_HD float exp2i(int e) {
  return e >= -126 ? f32_from_bits(uint32_t(e + 127) << 23) : f32_from_bits(1u << (e + 149));
}

// floor(log2(v)) and whether v is above 1.75·2^floor(log2 v), for finite v > 0 (subnormals too).
struct Log2Split {
  int floor_log2;
  bool above_1_75;
};

MXMOE_HD Log2Split log2_split(float v) {
  const uint32_t u = f32_bits(v) & 0x7fffffffu;
  const int biased = int(u >> 23);
  uint32_t mant = u & 0x7fffffu;
  int e = biased - 127;
  if (biased == 0) {  // subnormal: normalise the mantissa
    e = -126;
    while (!(mant & 0x800000u)) {
      mant <<= 1;
      --e;
    }
    mant &= 0x7fffffu;
  }
  return {e, mant > 0x600000u};  // 0x600000 = fraction of 1.75
}

// The E8M0 scale byte for a block with the given amax (finite, >= 0). All-zero block -> 0.
MXMOE_HD uint8_t e8m0_scale(float amax, ScaleRule rule) {
  if (amax == 0.f) return 0;
  const Log2Split s = log2_split(amax);
  // amax/448 = (m/1.75)·2^(e-8), m in [1,2): the smallest power of two >= it is 2^(e-8),
  // or 2^(e-7) when m > 1.75. Exact, so no division rounding enters the rule.
  int e = rule == ScaleRule::rceil ? s.floor_log2 - 8 + (s.above_1_75 ? 1 : 0) : s.floor_log2 - 8;
  e = e < -127 ? -127 : (e > 127 ? 127 : e);
  return uint8_t(e + 127);
}

// Reciprocal of the scale byte, exact: elements are x · 2^(127-s).
MXMOE_HD float e8m0_inverse(uint8_t s) { return exp2i(127 - int(s)); }
MXMOE_HD float e8m0_value(uint8_t s) {
  return s == kE8M0Nan ? f32_from_bits(0x7fc00000u) : exp2i(int(s) - 127);
}

MXMOE_HD float e4m3_to_f32(uint8_t b) {
  const uint32_t sign = uint32_t(b & 0x80) << 24;
  const int exp = (b >> 3) & 0xf;
  const int mant = b & 7;
  if (exp == 15 && mant == 7) return f32_from_bits(0x7fc00000u | sign);
  const float mag = exp == 0 ? float(mant) * exp2i(-9) : float(8 + mant) * exp2i(exp - 10);
  return f32_from_bits(f32_bits(mag) | sign);
}

// Offset of scale (r, c) in cuBLASLt's 128x4 tiled VEC32_UE8M0 layout for a [rows, cols] scale
// matrix padded to rows % 128 == 0 and cols % 4 == 0 (padded_cols = round_up(cols, 4)).
MXMOE_HD int64_t swizzled_scale_offset(int64_t r, int64_t c, int64_t padded_cols) {
  return (r / 128) * (padded_cols * 128) + (c / 4) * 512 + (r % 32) * 16 + ((r % 128) / 32) * 4 + c % 4;
}

constexpr int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

}  // namespace mxmoe
