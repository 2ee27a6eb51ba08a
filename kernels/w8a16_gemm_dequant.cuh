#pragma once
// MXFP8 -> bf16 in registers, straight into wgmma A fragments (kernels/w8a16_gemm_rs.cuh computes
// yᵀ = W·xᵀ with W as the A operand), with no bf16 copy of W in shared memory.
//
// Bit trick: an e4m3 byte b as bf16 bits ((b & 0x80) << 8) | ((b & 0x7f) << 4) is exactly
// e4m3(b) · 2^-120 (its 4-bit exponent lands in the low bits of bf16's 8-bit exponent, the 3
// mantissa bits on top of bf16's 7; e4m3 subnormals become bf16 subnormals), so one exact bf16
// multiply by 2^(s - 127 + 120) applies the block scale 2^(s - 127). That factor is a normal bf16
// for s <= 134; the kernels take this fast path where a group of scales is all below 128
// (warp_needs_wide: a test of their top bits; real checkpoints sit around 110-125). Other scales
// take the wide path: x 2^120 first (exact: the e4m3 value itself), then x 2^(s - 127), which
// covers every byte like e8m0_value (0 -> 2^-127, 255 -> NaN); only products below bf16's normal
// range round. e4m3 NaN codes (0x7f/0xff), which quantization never produces, become finite.
#include <cstdint>

namespace mxmoe::w8a16 {

// prmt selector picking bytes 2t and 2t+1 of the 8 bytes {lo, hi}, each followed by a byte of
// its sign bit: the result's 16-bit halves are [b, sign(b) x 8].
constexpr uint32_t spread_selector(uint32_t t) {
  return (2 * t) | ((8 | 2 * t) << 4) | ((2 * t + 1) << 8) | ((8 | (2 * t + 1)) << 12);
}

__device__ __forceinline__ uint32_t prmt(uint32_t lo, uint32_t hi, uint32_t sel) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(r) : "r"(lo), "r"(hi), "r"(sel));
  return r;
}

__device__ __forceinline__ uint32_t bf16x2_mul(uint32_t a, uint32_t b) {
  uint32_t r;
  asm("mul.rn.bf16x2 %0, %1, %2;\n" : "=r"(r) : "r"(a), "r"(b));
  return r;
}

// [b, sign(b) x 8] halves -> bf16x2 of e4m3(b) · 2^-120: shifting by 4 puts b's 7 low bits at
// 10..4 and a sign copy at 15; the mask drops the other sign copies.
__device__ __forceinline__ uint32_t e4m3x2_to_bf16x2_scaled(uint32_t spread) { return (spread << 4) & 0x87f087f0u; }

constexpr uint32_t bf16x2_bits(uint32_t bf16) { return bf16 * 0x10001u; }
constexpr uint32_t kTwoPow120 = bf16x2_bits((120u + 127u) << 7);

// The per-block factor for scale byte s (0..255), as bf16x2: fast 2^(s - 7), wide 2^(s - 127).
template <bool kWide>
__device__ __forceinline__ uint32_t scale_factor(uint32_t s) {
  if constexpr (kWide) return bf16x2_bits(s == 0 ? 0x40u : s == 255 ? 0x7fc0u : s << 7);
  return bf16x2_bits((s + 120) << 7);
}

// Byte b (0..3) of a word of packed scale bytes.
__device__ __forceinline__ uint32_t scale_byte(uint32_t word, uint32_t b) { return prmt(word, 0, 0x4440u | b); }

// Whether the warp dequantizes a group of scales on the wide path (`bits`: the group's scale words
// OR-ed together): where any lane's group has a byte >= 128. One choice for the whole warp, so
// its lanes do not diverge.
__device__ __forceinline__ bool warp_needs_wide(uint32_t bits) { return __any_sync(~0u, (bits & 0x80808080u) != 0); }

template <bool kWide>
__device__ __forceinline__ uint32_t dequant_pair(uint32_t lo, uint32_t hi, uint32_t sel, uint32_t factor) {
  uint32_t v = e4m3x2_to_bf16x2_scaled(prmt(lo, hi, sel));
  if constexpr (kWide) v = bf16x2_mul(v, kTwoPow120);
  return bf16x2_mul(v, factor);
}

// One k16 step of a warp's A fragment from the 16 fp8 bytes (k 0..15 of the step) of its rows
// g = lane/4 (row0) and g+8 (row1): a[0] = row g, k 2t..2t+1; a[1] = row g+8; a[2], a[3] the same
// at k + 8 (t = lane%4, sel = spread_selector(t)). f0, f1: scale factors of the two rows.
template <bool kWide>
__device__ __forceinline__ void dequant_fragment(uint4 row0, uint4 row1, uint32_t sel, uint32_t f0, uint32_t f1,
                                                 uint32_t (&a)[4]) {
  a[0] = dequant_pair<kWide>(row0.x, row0.y, sel, f0);
  a[1] = dequant_pair<kWide>(row1.x, row1.y, sel, f1);
  a[2] = dequant_pair<kWide>(row0.z, row0.w, sel, f0);
  a[3] = dequant_pair<kWide>(row1.z, row1.w, sel, f1);
}

}  // namespace mxmoe::w8a16
