#pragma once
// Host conversions between f32 and the 16-bit float formats (round to nearest even), used by the
// CPU reference backend and the tests. Device code uses the CUDA intrinsics instead.
#include <bit>
#include <cmath>
#include <cstdint>

namespace mxmoe {

inline float bf16_to_f32(uint16_t b) { return std::bit_cast<float>(uint32_t(b) << 16); }

inline uint16_t f32_to_bf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if (std::isnan(f)) return uint16_t((u >> 16) | 0x40);  // keep sign, force quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);                        // round to nearest even
  return uint16_t(u >> 16);
}

inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  const uint32_t mant = h & 0x3ff;
  if (exp == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));  // Inf/NaN
  if (exp == 0) {                                                                  // zero/subnormal
    const float v = std::ldexp(float(mant), -24);
    return sign ? -v : v;
  }
  return std::bit_cast<float>(sign | ((exp + 112) << 23) | (mant << 13));
}

inline uint16_t f32_to_f16(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000);
  const float a = std::fabs(f);
  if (std::isnan(f)) return sign | 0x7e00;
  if (a >= 65520.f) return sign | 0x7c00;  // rounds to Inf
  if (a < 6.103515625e-05f) return sign | uint16_t(std::nearbyint(a * 16777216.f));  // subnormal: k*2^-24
  const int e = std::ilogb(a);
  uint32_t m = uint32_t(std::nearbyint(std::ldexp(a, 10 - e)));  // 1024..2048
  int be = e + 15;
  if (m == 2048) { m = 1024; ++be; }
  return uint16_t(sign | (be << 10) | (m - 1024));
}

}  // namespace mxmoe
