#include <cmath>

#include "engine/error.h"
#include "engine/numerics.h"
#include "kernels/gated_add.h"

namespace mxmoe {

namespace detail {

void check_gated_add_args(const char* op, const Tensor& out, const Tensor& x, const Tensor& gate, Device device) {
  MXMOE_CHECK(out.device() == device && x.device() == device && gate.device() == device, op,
              ": tensors must be on the ", device == Device::cpu ? "CPU" : "GPU");
  MXMOE_CHECK(out.dtype() == DType::bf16 && x.dtype() == DType::bf16 && out.dim() == 2 && x.shape() == out.shape() &&
                  out.is_contiguous() && x.is_contiguous(),
              op, ": out and x must be contiguous bf16 [T, H] of one shape, got ", shape_str(out.shape()), " and ",
              shape_str(x.shape()));
  MXMOE_CHECK(gate.dtype() == DType::f32 && gate.is_contiguous() && gate.numel() == out.size(0), op,
              ": gate must be f32 [T] or [T, 1], got ", shape_str(gate.shape()));
}

}  // namespace detail

void add_sigmoid_gated_ref(const Tensor& out, const Tensor& x, const Tensor& gate) {
  detail::check_gated_add_args("add_sigmoid_gated_ref", out, x, gate, Device::cpu);
  const int64_t t_count = out.size(0), h = out.size(1);
  auto* o = out.data_as<uint16_t>();
  const auto* xv = x.data_as<const uint16_t>();
  for (int64_t t = 0; t < t_count; ++t) {
    const float g = bf16_to_f32(f32_to_bf16(gate.data_as<const float>()[t]));
    const float s = bf16_to_f32(f32_to_bf16(1.f / (1.f + std::exp(-g))));
    for (int64_t i = 0; i < h; ++i) {
      const float p = bf16_to_f32(f32_to_bf16(s * bf16_to_f32(xv[t * h + i])));
      o[t * h + i] = f32_to_bf16(bf16_to_f32(o[t * h + i]) + p);
    }
  }
}

}  // namespace mxmoe
