// CPU reference of the in-place RoPE (see rope.h).
#include <cmath>

#include "engine/numerics.h"
#include "kernels/rope.h"
#include "kernels/token_rows.h"

namespace mxmoe {

void detail::check_rope_args(const char* op, const Tensor& q, const Tensor& k, const Tensor& positions,
                             const Tensor& inv_freq, Device device) {
  MXMOE_CHECK(q.dtype() == DType::bf16 && k.dtype() == DType::bf16, op, ": q and k must be bf16");
  MXMOE_CHECK(positions.dtype() == DType::i32 && positions.is_contiguous(), op, ": positions must be contiguous i32");
  MXMOE_CHECK(inv_freq.dtype() == DType::f32 && inv_freq.is_contiguous(), op, ": inv_freq must be contiguous f32");
  MXMOE_CHECK(q.device() == device && k.device() == device && positions.device() == device && inv_freq.device() == device,
              op, ": tensors are on the wrong device");
  MXMOE_CHECK(q.dim() == 3 && k.dim() == 3, op, ": q and k must be [T, heads, head_dim], got ", shape_str(q.shape()),
              " and ", shape_str(k.shape()));
  const int64_t hd = q.size(2);
  MXMOE_CHECK(k.size(2) == hd && q.size(0) == k.size(0) && positions.numel() == q.size(0), op, ": q ",
              shape_str(q.shape()), ", k ", shape_str(k.shape()), " and positions ", shape_str(positions.shape()),
              " disagree");
  MXMOE_CHECK(hd % 2 == 0 && inv_freq.numel() == hd / 2, op, ": inv_freq has ", inv_freq.numel(),
              " values for head_dim ", hd);
  token_rows(q, op);
  token_rows(k, op);
}

namespace {

float round_bf16(float v) { return bf16_to_f32(f32_to_bf16(v)); }

void rotate(const Tensor& x, const int32_t* pos, const float* inv_freq, float scaling) {
  const TokenRows r = token_rows(x, "rope_ref");
  const int64_t heads = x.size(1), hd = x.size(2), half = hd / 2;
  for (int64_t t = 0; t < r.tokens; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const float freq = float(pos[t]) * inv_freq[i];  // fp32, as transformers' position matmul
      const float c = round_bf16(float(std::cos(double(freq))) * scaling);
      const float s = round_bf16(float(std::sin(double(freq))) * scaling);
      for (int64_t h = 0; h < heads; ++h) {
        uint16_t* row = x.data_as<uint16_t>() + t * r.stride + h * hd;
        const float a = bf16_to_f32(row[i]), b = bf16_to_f32(row[i + half]);
        row[i] = f32_to_bf16(round_bf16(a * c) + round_bf16(-b * s));
        row[i + half] = f32_to_bf16(round_bf16(b * c) + round_bf16(a * s));
      }
    }
  }
}

}  // namespace

void rope_ref(const Tensor& q, const Tensor& k, const Tensor& positions, const Tensor& inv_freq, float attention_scaling) {
  detail::check_rope_args("rope_ref", q, k, positions, inv_freq, Device::cpu);
  rotate(q, positions.data_as<const int32_t>(), inv_freq.data_as<const float>(), attention_scaling);
  rotate(k, positions.data_as<const int32_t>(), inv_freq.data_as<const float>(), attention_scaling);
}

}  // namespace mxmoe
