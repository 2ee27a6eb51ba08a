#include "kernels/matmul_ref.h"

#include "engine/error.h"
#include "engine/numerics.h"

namespace mxmoe {

std::vector<float> to_f32_vector(const Tensor& t) {
  MXMOE_CHECK(t.device() == Device::cpu && t.is_contiguous(), "to_f32_vector needs a contiguous CPU tensor, got ",
              shape_str(t.shape()));
  std::vector<float> v(size_t(t.numel()));
  for (size_t i = 0; i < v.size(); ++i) {
    switch (t.dtype()) {
      case DType::f32: v[i] = t.data_as<const float>()[i]; break;
      case DType::bf16: v[i] = bf16_to_f32(t.data_as<const uint16_t>()[i]); break;
      case DType::f16: v[i] = f16_to_f32(t.data_as<const uint16_t>()[i]); break;
      case DType::e4m3: v[i] = e4m3_to_f32(t.data_as<const uint8_t>()[i]); break;
      default: fail("to_f32_vector: unsupported dtype ", dtype_name(t.dtype()));
    }
  }
  return v;
}

void from_f32_vector(const std::vector<float>& values, const Tensor& t) {
  MXMOE_CHECK(t.device() == Device::cpu && t.is_contiguous() && size_t(t.numel()) == values.size(),
              "from_f32_vector: ", values.size(), " values into ", shape_str(t.shape()));
  for (size_t i = 0; i < values.size(); ++i) {
    switch (t.dtype()) {
      case DType::f32: t.data_as<float>()[i] = values[i]; break;
      case DType::bf16: t.data_as<uint16_t>()[i] = f32_to_bf16(values[i]); break;
      case DType::f16: t.data_as<uint16_t>()[i] = f32_to_f16(values[i]); break;
      default: fail("from_f32_vector: unsupported dtype ", dtype_name(t.dtype()));
    }
  }
}

namespace {

void matmul_f32(const Tensor& x, const std::vector<float>& w, int64_t n, const Tensor* bias, const Tensor& y) {
  MXMOE_CHECK(x.dim() == 2 && y.dim() == 2, "matmul_ref: x and y must be 2-D, got ", shape_str(x.shape()), " and ",
              shape_str(y.shape()));
  const int64_t m = x.size(0), k = x.size(1);
  MXMOE_CHECK(int64_t(w.size()) == n * k && y.size(0) == m && y.size(1) == n, "matmul_ref: x ", shape_str(x.shape()),
              " W [", n, ", ", int64_t(w.size()) / std::max<int64_t>(n, 1), "] y ", shape_str(y.shape()));
  const std::vector<float> xv = to_f32_vector(x);
  std::vector<float> bv;
  if (bias) {
    MXMOE_CHECK(bias->numel() == n, "matmul_ref: bias ", shape_str(bias->shape()), " for N = ", n);
    bv = to_f32_vector(*bias);
  }
  std::vector<float> out(size_t(m * n));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double acc = bias ? bv[j] : 0.0;
      for (int64_t kk = 0; kk < k; ++kk) acc += double(xv[i * k + kk]) * double(w[j * k + kk]);
      out[i * n + j] = float(acc);
    }
  from_f32_vector(out, y);
}

}  // namespace

void matmul_ref(const Tensor& x, const Tensor& w, const Tensor* bias, const Tensor& y) {
  MXMOE_CHECK(w.dim() == 2, "matmul_ref: W must be [N, K], got ", shape_str(w.shape()));
  matmul_f32(x, to_f32_vector(w), w.size(0), bias, y);
}

void matmul_ref(const Tensor& x, const MxTensor& w, const Tensor* bias, const Tensor& y) {
  MXMOE_CHECK(w.elems.dim() == 2, "matmul_ref: W must be [N, K], got ", shape_str(w.elems.shape()));
  Tensor wf = Tensor::empty(w.elems.shape(), DType::f32, Device::cpu);
  mxfp8_dequantize_ref(w, wf);
  matmul_f32(x, to_f32_vector(wf), w.elems.size(0), bias, y);
}

}  // namespace mxmoe
