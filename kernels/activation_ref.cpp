// CPU reference of the SiLU-gated activation (see activation.h).
#include <cmath>

#include "engine/numerics.h"
#include "kernels/activation.h"
#include "kernels/token_rows.h"

namespace mxmoe {

int64_t detail::check_silu_mul_args(const char* op, const Tensor& gate_up, const Tensor& out, Device device) {
  MXMOE_CHECK(gate_up.dtype() == DType::bf16 && out.dtype() == DType::bf16, op, ": gate_up and out must be bf16");
  MXMOE_CHECK(gate_up.device() == device && out.device() == device, op, ": tensors are on the wrong device");
  const TokenRows g = token_rows(gate_up, op), o = token_rows(out, op);
  MXMOE_CHECK(g.tokens == o.tokens && g.width == 2 * o.width, op, ": gate_up ", shape_str(gate_up.shape()),
              " must be [T, 2I] for out ", shape_str(out.shape()));
  MXMOE_CHECK(o.width % 8 == 0, op, ": intermediate size must be a multiple of 8, got ", o.width);
  return o.width;
}

void silu_mul_ref(const Tensor& gate_up, const Tensor& out) {
  const int64_t inter = detail::check_silu_mul_args("silu_mul_ref", gate_up, out, Device::cpu);
  const TokenRows g = token_rows(gate_up, "gate_up"), o = token_rows(out, "out");
  for (int64_t t = 0; t < g.tokens; ++t) {
    const uint16_t* gate = gate_up.data_as<const uint16_t>() + t * g.stride;
    uint16_t* dst = out.data_as<uint16_t>() + t * o.stride;
    for (int64_t i = 0; i < inter; ++i) {
      const float x = bf16_to_f32(gate[i]);
      const float s = bf16_to_f32(f32_to_bf16(x / (1.f + std::exp(-x))));
      dst[i] = f32_to_bf16(s * bf16_to_f32(gate[inter + i]));
    }
  }
}

}  // namespace mxmoe
