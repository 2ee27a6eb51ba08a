// CPU reference of dtype conversion and the dummy-weight fill (test oracle; also the CPU
// backend's loading path).
#include <cmath>

#include "engine/error.h"
#include "engine/numerics.h"
#include "kernels/convert.h"

namespace mxmoe {

namespace {

bool is_float16_or_32(DType t) { return t == DType::f32 || t == DType::bf16 || t == DType::f16; }

void check_cpu_float(const Tensor& t, const char* op) {
  MXMOE_CHECK(t.device() == Device::cpu && t.is_contiguous() && is_float16_or_32(t.dtype()), op,
              ": needs a contiguous CPU f32/bf16/f16 tensor, got ", dtype_name(t.dtype()), " ", shape_str(t.shape()));
}

float load(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::f32: return static_cast<const float*>(p)[i];
    case DType::bf16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    default: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
  }
}

void store(void* p, DType t, int64_t i, float v) {
  switch (t) {
    case DType::f32: static_cast<float*>(p)[i] = v; break;
    case DType::bf16: static_cast<uint16_t*>(p)[i] = f32_to_bf16(v); break;
    default: static_cast<uint16_t*>(p)[i] = f32_to_f16(v);
  }
}

}  // namespace

FillGeometry whole_tensor_geometry(int64_t numel) { return {1, numel, 0, numel, 1}; }

int64_t convert_dtype_ref(const Tensor& src, const Tensor& dst) {
  check_cpu_float(src, "convert_dtype_ref");
  check_cpu_float(dst, "convert_dtype_ref");
  MXMOE_CHECK(src.numel() == dst.numel(), "convert_dtype_ref: ", src.numel(), " elements into ", dst.numel());
  int64_t nonfinite = 0;
  for (int64_t i = 0; i < src.numel(); ++i) {
    const float v = load(src.data(), src.dtype(), i);
    nonfinite += !std::isfinite(v);
    store(dst.data(), dst.dtype(), i, v);
  }
  return nonfinite;
}

int64_t count_nonfinite_ref(const Tensor& x) {
  check_cpu_float(x, "count_nonfinite_ref");
  int64_t nonfinite = 0;
  for (int64_t i = 0; i < x.numel(); ++i) nonfinite += !std::isfinite(load(x.data(), x.dtype(), i));
  return nonfinite;
}

void fill_normal_ref(const Tensor& dst, const NormalFill& fill) {
  check_cpu_float(dst, "fill_normal_ref");
  const FillGeometry& g = fill.geometry;
  MXMOE_CHECK(g.outer * g.length * g.inner == dst.numel() && g.begin + g.length <= g.full,
              "fill_normal_ref: geometry does not match ", shape_str(dst.shape()));
  int64_t i = 0;
  for (int64_t o = 0; o < g.outer; ++o)
    for (int64_t l = 0; l < g.length; ++l)
      for (int64_t in = 0; in < g.inner; ++in, ++i) {
        const uint64_t index = uint64_t((o * g.full + g.begin + l) * g.inner + in);
        store(dst.data(), dst.dtype(), i, normal_at(fill.seed, index, fill.mean, fill.std));
      }
}

}  // namespace mxmoe
