// CPU reference of the fused MoE (the oracle of kernels/fused_moe.cu): plain loops, double
// accumulation, MXFP8 weights dequantized exactly. Rounding points are listed in fused_moe.h.
#include <cmath>
#include <algorithm>
#include <vector>

#include "engine/error.h"
#include "engine/numerics.h"
#include "kernels/fused_moe.h"
#include "kernels/matmul_ref.h"
#include "kernels/moe_routing.h"

namespace mxmoe {

namespace {

void check_float_tensor(const Tensor& t, DType dtype, Device device, const char* op, const char* name) {
  MXMOE_CHECK(t.dtype() == dtype && t.is_contiguous() && t.device() == device, op, ": ", name, " must be contiguous ",
              dtype_name(dtype), " on the ", device == Device::cpu ? "CPU" : "GPU", ", got ", dtype_name(t.dtype()),
              " ", shape_str(t.shape()));
}

void check_shape(const Tensor& t, const Shape& expected, const char* op, const char* name) {
  MXMOE_CHECK(t.shape() == expected, op, ": ", name, " is ", shape_str(t.shape()), ", expected ",
              shape_str(expected));
}

// All expert weights of one kind as f32 values, [E, rows, cols] row-major.
std::vector<float> weights_f32(const MxTensor& mx, const Tensor& plain, bool quantized) {
  if (!quantized) return to_f32_vector(plain);
  Tensor f = Tensor::empty(mx.elems.shape(), DType::f32, Device::cpu);
  mxfp8_dequantize_ref(mx, f);
  return to_f32_vector(f);
}

double silu(double g) { return g / (1.0 + std::exp(-g)); }

}  // namespace

MoeShape check_fused_moe_args(const Tensor& x, const Tensor& router_logits, const MoeWeights& w,
                              const MoeRouting& routing, const Tensor& out, const char* op) {
  MXMOE_CHECK(x.dim() == 2, op, ": x must be [T, H], got ", shape_str(x.shape()));
  const Device dev = x.device();
  check_float_tensor(x, DType::bf16, dev, op, "x");
  check_float_tensor(out, DType::bf16, dev, op, "out");
  check_float_tensor(router_logits, DType::f32, dev, op, "router_logits");
  MXMOE_CHECK(router_logits.dim() == 2, op, ": router_logits must be [T, E], got ",
              shape_str(router_logits.shape()));
  const Tensor& w13 = w.quantized() ? w.w13_mx.elems : w.w13;
  const Tensor& w2 = w.quantized() ? w.w2_mx.elems : w.w2;
  MXMOE_CHECK(w13.dim() == 3 && w2.dim() == 3, op, ": expert weights must be w13 [E, 2I, H] and w2 [E, H, I], got ",
              shape_str(w13.shape()), " and ", shape_str(w2.shape()));
  const MoeShape s{x.size(0), x.size(1), w13.size(1) / 2, w13.size(0)};
  check_shape(w13, {s.experts, 2 * s.inter, s.hidden}, op, "w13");
  check_shape(w2, {s.experts, s.hidden, s.inter}, op, "w2");
  check_shape(router_logits, {s.tokens, s.experts}, op, "router_logits");
  check_shape(out, {s.tokens, s.hidden}, op, "out");
  MXMOE_CHECK(s.inter >= 1 && s.hidden % 32 == 0 && s.inter % 32 == 0, op, ": hidden size ", s.hidden,
              " and intermediate size ", s.inter, " (this rank's shard) must be positive multiples of 32");
  if (w.quantized()) {
    MXMOE_CHECK(!w.w13.defined() || w.w13.numel() == 0, op, ": both MXFP8 and bf16 expert weights are set");
    check_float_tensor(w.w13_mx.elems, DType::e4m3, dev, op, "w13 elements");
    check_float_tensor(w.w2_mx.elems, DType::e4m3, dev, op, "w2 elements");
    check_float_tensor(w.w13_mx.scales, DType::e8m0, dev, op, "w13 scales");
    check_float_tensor(w.w2_mx.scales, DType::e8m0, dev, op, "w2 scales");
    check_shape(w.w13_mx.scales, {s.experts, 2 * s.inter, s.hidden / 32}, op, "w13 scales");
    check_shape(w.w2_mx.scales, {s.experts, s.hidden, s.inter / 32}, op, "w2 scales");
  } else {
    check_float_tensor(w.w13, DType::bf16, dev, op, "w13");
    check_float_tensor(w.w2, DType::bf16, dev, op, "w2");
  }
  MXMOE_CHECK(routing.top_k >= 1 && routing.top_k <= s.experts && routing.top_k <= kMoeMaxTopK, op, ": top_k ",
              routing.top_k, " with ", s.experts, " experts (supported: 1..min(E, ", kMoeMaxTopK, "))");
  return s;
}

void fused_moe_ref(const Tensor& x, const Tensor& router_logits, const MoeWeights& w, const MoeRouting& routing,
                   const Tensor& out) {
  const MoeShape s = check_fused_moe_args(x, router_logits, w, routing, out, "fused_moe_ref");
  MXMOE_CHECK(x.device() == Device::cpu, "fused_moe_ref: expects CPU tensors");
  const int k = routing.top_k;
  const int64_t hid = s.hidden, inter = s.inter;
  Tensor ids = Tensor::empty({s.tokens, k}, DType::i32, Device::cpu);  // [T, k]
  Tensor weights = Tensor::empty({s.tokens, k}, DType::f32, Device::cpu);  // [T, k]
  moe_route_ref(router_logits, k, routing.renormalize, ids, weights);
  const std::vector<float> w13 = weights_f32(w.w13_mx, w.w13, w.quantized());  // [E, 2I, H]
  const std::vector<float> w2 = weights_f32(w.w2_mx, w.w2, w.quantized());  // [E, H, I]
  const std::vector<float> xv = to_f32_vector(x);  // [T, H]
  std::vector<float> act(static_cast<size_t>(inter), 0.f);  // [I]
  std::vector<double> acc(static_cast<size_t>(hid));  // [H]
  std::vector<float> result(size_t(s.tokens * hid));  // [T, H]
  for (int64_t t = 0; t < s.tokens; ++t) {
    std::fill(acc.begin(), acc.end(), 0.0);
    const float* xt = &xv[size_t(t * hid)];
    for (int slot = 0; slot < k; ++slot) {
      const int64_t e = ids.data_as<const int32_t>()[t * k + slot];
      const float* gate_up = &w13[size_t(e * 2 * inter * hid)];
      for (int64_t i = 0; i < inter; ++i) {
        double g = 0, u = 0;
        for (int64_t h = 0; h < hid; ++h) {
          g += double(xt[h]) * gate_up[i * hid + h];
          u += double(xt[h]) * gate_up[(inter + i) * hid + h];
        }
        act[size_t(i)] = bf16_to_f32(f32_to_bf16(float(silu(g) * u)));
      }
      const float* down = &w2[size_t(e * hid * inter)];
      const double weight = weights.data_as<const float>()[t * k + slot];
      for (int64_t h = 0; h < hid; ++h) {
        double y = 0;
        for (int64_t i = 0; i < inter; ++i) y += double(act[size_t(i)]) * down[h * inter + i];
        acc[size_t(h)] += weight * y;
      }
    }
    for (int64_t h = 0; h < hid; ++h) result[size_t(t * hid + h)] = float(acc[size_t(h)]);
  }
  from_f32_vector(result, out);
}

}  // namespace mxmoe
