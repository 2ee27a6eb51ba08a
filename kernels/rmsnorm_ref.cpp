// CPU reference of RMSNorm and the fused residual-add + RMSNorm (see rmsnorm.h).
#include <cmath>

#include "engine/numerics.h"
#include "kernels/rmsnorm.h"
#include "kernels/token_rows.h"

namespace mxmoe {

namespace detail {

int64_t check_rmsnorm_args(const char* op, const Tensor& x, const Tensor& weight, const Tensor& out, Device device) {
  MXMOE_CHECK(x.dtype() == DType::bf16 && out.dtype() == DType::bf16 && weight.dtype() == DType::bf16, op,
              ": x, weight and out must be bf16, got ", dtype_name(x.dtype()), ", ", dtype_name(weight.dtype()), ", ",
              dtype_name(out.dtype()));
  MXMOE_CHECK(x.device() == device && out.device() == device && weight.device() == device, op,
              ": tensors are on the wrong device");
  MXMOE_CHECK(weight.is_contiguous(), op, ": weight must be contiguous");
  const int64_t d = weight.numel();
  const TokenRows xr = token_rows(x, op), orows = token_rows(out, op);
  MXMOE_CHECK(d > 0 && d % 8 == 0, op, ": row length (weight size) must be a positive multiple of 8, got ", d);
  MXMOE_CHECK(xr.width % d == 0, op, ": token width ", xr.width, " of x ", shape_str(x.shape()),
              " is not a multiple of the weight size ", d);
  MXMOE_CHECK(xr.tokens == orows.tokens && xr.width == orows.width, op, ": out ", shape_str(out.shape()),
              " does not match x ", shape_str(x.shape()));
  return d;
}

}  // namespace detail

namespace {

float round_bf16(float v) { return bf16_to_f32(f32_to_bf16(v)); }

// Normalizes the `d` values at src (already fp32) into dst with HF's two roundings.
void norm_row(const float* src, const uint16_t* w, int64_t d, float eps, uint16_t* dst) {
  double sum = 0;
  for (int64_t i = 0; i < d; ++i) sum += double(src[i]) * double(src[i]);
  const float r = 1.f / std::sqrt(float(sum / double(d)) + eps);
  for (int64_t i = 0; i < d; ++i) dst[i] = f32_to_bf16(bf16_to_f32(w[i]) * round_bf16(src[i] * r));
}

}  // namespace

void rmsnorm_ref(const Tensor& x, const Tensor& weight, float eps, const Tensor& out) {
  const int64_t d = detail::check_rmsnorm_args("rmsnorm_ref", x, weight, out, Device::cpu);
  const TokenRows xr = token_rows(x, "x"), orows = token_rows(out, "out");
  std::vector<float> row(static_cast<size_t>(d));
  for (int64_t t = 0; t < xr.tokens; ++t) {
    for (int64_t c = 0; c < xr.width; c += d) {
      const uint16_t* src = x.data_as<const uint16_t>() + t * xr.stride + c;
      for (int64_t i = 0; i < d; ++i) row[size_t(i)] = bf16_to_f32(src[i]);
      norm_row(row.data(), weight.data_as<const uint16_t>(), d, eps, out.data_as<uint16_t>() + t * orows.stride + c);
    }
  }
}

void add_rmsnorm_ref(const Tensor& residual, const Tensor& x, const Tensor& weight, float eps, const Tensor& out) {
  const int64_t d = detail::check_rmsnorm_args("add_rmsnorm_ref", x, weight, out, Device::cpu);
  detail::check_rmsnorm_args("add_rmsnorm_ref (residual)", residual, weight, out, Device::cpu);
  const TokenRows xr = token_rows(x, "x"), rr = token_rows(residual, "residual"), orows = token_rows(out, "out");
  MXMOE_CHECK(xr.width == d, "add_rmsnorm_ref: rows must be exactly the weight size ", d, ", got ", xr.width);
  std::vector<float> row(static_cast<size_t>(d));
  for (int64_t t = 0; t < xr.tokens; ++t) {
    const uint16_t* src = x.data_as<const uint16_t>() + t * xr.stride;
    uint16_t* res = residual.data_as<uint16_t>() + t * rr.stride;
    for (int64_t i = 0; i < d; ++i) {
      res[i] = f32_to_bf16(bf16_to_f32(res[i]) + bf16_to_f32(src[i]));
      row[size_t(i)] = bf16_to_f32(res[i]);
    }
    norm_row(row.data(), weight.data_as<const uint16_t>(), d, eps, out.data_as<uint16_t>() + t * orows.stride);
  }
}

}  // namespace mxmoe
