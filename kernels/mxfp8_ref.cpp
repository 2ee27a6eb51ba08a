// CPU reference for MXFP8 quantization (the test oracle for the CUDA kernels).
#include <cmath>
#include <cstring>

#include "engine/error.h"
#include "engine/numerics.h"
#include "kernels/mxfp8.h"

namespace mxmoe {

namespace {

// Round to nearest even, saturating to ±448; NaN -> NaN. Written independently of the GPU's
// cvt.rn.satfinite.e4m3x2 instruction so the bit-exactness test checks one against the other.
uint8_t f32_to_e4m3(float x) {
  const uint8_t sign = uint8_t((f32_bits(x) >> 24) & 0x80);
  if (std::isnan(x)) return sign | kE4M3Nan;
  const float a = std::fabs(x);
  if (a >= kE4M3Max) return sign | 0x7E;                                           // ±448
  if (a < exp2i(-6)) return sign | uint8_t(std::nearbyint(a * 512.f));             // k·2^-9, k=8 is 0x08
  const int e = log2_split(a).floor_log2;                                          // -6..8
  int mant = int(std::nearbyint(std::ldexp(a, 3 - e))) - 8;                        // 0..8
  int biased = e + 7;
  if (mant == 8) {
    mant = 0;
    ++biased;
  }
  return uint8_t(sign | biased << 3 | mant);
}

float load_f32(const Tensor& x, int64_t i) {
  switch (x.dtype()) {
    case DType::f32: return x.data_as<const float>()[i];
    case DType::bf16: return bf16_to_f32(x.data_as<const uint16_t>()[i]);
    default: return f16_to_f32(x.data_as<const uint16_t>()[i]);  // f16 (checked by the caller)
  }
}

void check_cpu(const Tensor& t, const char* op) {
  MXMOE_CHECK(t.device() == Device::cpu, op, ": the reference runs on CPU tensors");
}

}  // namespace

int64_t mxfp8_quantize_ref(const Tensor& x, const MxTensor& q, ScaleRule rule) {
  check_mxfp8_shapes(x, q, "mxfp8_quantize_ref");
  check_cpu(x, "mxfp8_quantize_ref");
  auto* elems = q.elems.data_as<uint8_t>();
  auto* scales = q.scales.data_as<uint8_t>();
  int64_t nonfinite = 0;
  float v[kMxBlock];
  for (int64_t b = 0; b < x.numel() / kMxBlock; ++b) {
    float amax = 0.f;
    int bad = 0;
    for (int i = 0; i < kMxBlock; ++i) {
      v[i] = load_f32(x, b * kMxBlock + i);
      bad += !std::isfinite(v[i]);
      amax = std::fmax(amax, std::fabs(v[i]));
    }
    nonfinite += bad;
    const uint8_t s = bad ? kE8M0Nan : e8m0_scale(amax, rule);
    scales[b] = s;
    for (int i = 0; i < kMxBlock; ++i) elems[b * kMxBlock + i] = bad ? kE4M3Nan : f32_to_e4m3(v[i] * e8m0_inverse(s));
  }
  return nonfinite;
}

void mxfp8_dequantize_ref(const MxTensor& q, const Tensor& out) {
  check_mxfp8_shapes(out, q, "mxfp8_dequantize_ref");
  check_cpu(out, "mxfp8_dequantize_ref");
  MXMOE_CHECK(out.dtype() == DType::f32 || out.dtype() == DType::bf16,
              "mxfp8_dequantize_ref: output must be f32 or bf16, got ", dtype_name(out.dtype()));
  const auto* elems = q.elems.data_as<const uint8_t>();
  const auto* scales = q.scales.data_as<const uint8_t>();
  for (int64_t i = 0; i < out.numel(); ++i) {
    const float v = e4m3_to_f32(elems[i]) * e8m0_value(scales[i / kMxBlock]);
    if (out.dtype() == DType::f32) out.data_as<float>()[i] = v;
    else out.data_as<uint16_t>()[i] = f32_to_bf16(v);
  }
}

void mxfp8_swizzle_scales_ref(const Tensor& scales, const Tensor& out) {
  check_cpu(scales, "mxfp8_swizzle_scales_ref");
  MXMOE_CHECK(out.shape() == swizzled_scales_shape(scales.shape()) && scales.is_contiguous() && out.is_contiguous(),
              "mxfp8_swizzle_scales_ref: scales ", shape_str(scales.shape()), " -> out ", shape_str(out.shape()),
              ", expected ", shape_str(swizzled_scales_shape(scales.shape())));
  const int64_t rows = scales.size(-2), cols = scales.size(-1);
  const int64_t padded_cols = round_up(cols, 4), tile = round_up(rows, 128) * padded_cols;
  const int64_t batch = rows * cols == 0 ? 0 : scales.numel() / (rows * cols);
  const auto* in = scales.data_as<const uint8_t>();
  auto* o = out.data_as<uint8_t>();
  std::memset(o, 0, out.nbytes());
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c)
        o[b * tile + swizzled_scale_offset(r, c, padded_cols)] = in[(b * rows + r) * cols + c];
}

MxTensor mxfp8_empty(const Shape& shape, Device device) {
  MXMOE_CHECK(!shape.empty() && shape.back() % kMxBlock == 0, "MXFP8 needs the last dimension (K) to be a multiple of ",
              kMxBlock, ", got shape ", shape_str(shape));
  Shape scale_shape = shape;
  scale_shape.back() /= kMxBlock;
  return {Tensor::empty(shape, DType::e4m3, device), Tensor::empty(scale_shape, DType::e8m0, device)};
}

Shape swizzled_scales_shape(const Shape& scales_shape) {
  MXMOE_CHECK(scales_shape.size() >= 2, "scale swizzle needs [..., rows, cols], got ", shape_str(scales_shape));
  Shape out(scales_shape.begin(), scales_shape.end() - 1);
  out.back() = round_up(scales_shape[scales_shape.size() - 2], 128) * round_up(scales_shape.back(), 4);
  return out;
}

void check_mxfp8_shapes(const Tensor& x, const MxTensor& q, const char* op) {
  MXMOE_CHECK(x.dim() >= 1, op, ": tensor has no dimensions");
  const int64_t k = x.size(-1);
  MXMOE_CHECK(k % kMxBlock == 0, op, ": K = ", k, " (last dimension of ", shape_str(x.shape()),
              ") is not a multiple of ", kMxBlock);
  MXMOE_CHECK(x.dtype() == DType::f32 || x.dtype() == DType::bf16 || x.dtype() == DType::f16, op,
              ": unsupported dtype ", dtype_name(x.dtype()));
  Shape scale_shape = x.shape();
  scale_shape.back() /= kMxBlock;
  MXMOE_CHECK(q.elems.shape() == x.shape() && q.elems.dtype() == DType::e4m3, op, ": elements must be e4m3 ",
              shape_str(x.shape()), ", got ", dtype_name(q.elems.dtype()), " ", shape_str(q.elems.shape()));
  MXMOE_CHECK(q.scales.shape() == scale_shape && q.scales.dtype() == DType::e8m0, op, ": scales must be e8m0 ",
              shape_str(scale_shape), ", got ", dtype_name(q.scales.dtype()), " ", shape_str(q.scales.shape()));
  MXMOE_CHECK(x.is_contiguous() && q.elems.is_contiguous() && q.scales.is_contiguous(), op,
              ": tensors must be contiguous");
  MXMOE_CHECK(x.device() == q.elems.device() && x.device() == q.scales.device(), op,
              ": tensors are on different devices");
}

}  // namespace mxmoe
