// cuBLASLt's FP8 per-tensor GEMM (the benchmarks' speed ceiling for fp8 weights on Hopper) against a
// double-precision product of the decoded e4m3 operands, on fresh random bytes. The output is bf16
// (2^-9 relative rounding) and fast accumulation keeps ~14 mantissa bits per tensor-core step, so the
// bound is 1e-2, while dropping the scales (21x) leaves the result 95% off.
#include <gtest/gtest.h>

#include "engine/gpu_info.h"
#include "engine/stream.h"
#include "kernels/cublaslt_gemm.h"
#include "kernels/mxfp8_format.h"
#include "test_util.h"

using namespace mxmoe;

namespace {

// [rows, cols] e4m3 of random bytes, NaN codes (0x7F, 0xFF) moved to their neighbour.
Tensor random_e4m3(int64_t rows, int64_t cols, std::mt19937_64& rng) {
  Tensor t = Tensor::empty({rows, cols}, DType::e4m3, Device::cpu);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const uint8_t b = uint8_t(rng());
    t.data_as<uint8_t>()[i] = (b & 0x7f) == 0x7f ? uint8_t(b ^ 1) : b;
  }
  return t;
}

Tensor scalar_f32(float v) {
  Tensor t = Tensor::empty({1}, DType::f32, Device::cpu);
  *t.data_as<float>() = v;
  return t.to(Device::cuda);
}

// y[m, n] = scale · Σ_k x[m, k]·w[n, k] in double, as f32.
Tensor product_ref(const Tensor& x, const Tensor& w, double scale) {
  const int64_t m = x.size(0), n = w.size(0), k = x.size(1);
  std::vector<float> y(size_t(m * n));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0;
      for (int64_t l = 0; l < k; ++l)
        acc += double(e4m3_to_f32(x.data_as<uint8_t>()[i * k + l])) * double(e4m3_to_f32(w.data_as<uint8_t>()[j * k + l]));
      y[size_t(i * n + j)] = float(acc * scale);
    }
  Tensor t = Tensor::empty({m, n}, DType::f32, Device::cpu);
  from_f32_vector(y, t);
  return t;
}

bool fp8_capable() { return gpu_info().major * 10 + gpu_info().minor >= 89; }

}  // namespace

TEST(CublasLtFp8, PerTensorScaledMatchesReference) {
  MXMOE_REQUIRE_GPU();
  if (!fp8_capable()) GTEST_SKIP() << "cuBLASLt FP8 needs sm_89+";
  std::mt19937_64 rng(mxmoe::testing::fresh_seed());
  const float x_scale = 0.0625f, w_scale = 0.75f;  // 0.75: not a power of two, so it is a real multiply
  Stream stream;
  for (auto [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{1, 256, 512}, {77, 384, 1024}, {256, 512, 4096}}) {
    SCOPED_TRACE(cat("M=", m, " N=", n, " K=", k));
    const Tensor x = random_e4m3(m, k, rng), w = random_e4m3(n, k, rng);
    const Tensor y = Tensor::empty({m, n}, DType::bf16, Device::cuda);
    cublaslt_gemm_fp8(x.to(Device::cuda), scalar_f32(x_scale), w.to(Device::cuda), scalar_f32(w_scale), y, stream);
    stream.synchronize();
    const Tensor ref = product_ref(x, w, double(x_scale) * double(w_scale));
    EXPECT_LT(mxmoe::testing::rel_error(y, ref), 1e-2);
    EXPECT_GT(mxmoe::testing::rel_error(y, product_ref(x, w, 1.0)), 0.9);  // the scales were applied
  }
}

TEST(CublasLtFp8, BadArgumentsNameTheOperand) {
  MXMOE_REQUIRE_GPU();
  const Tensor x = Tensor::empty({4, 40}, DType::e4m3, Device::cuda), w = Tensor::empty({8, 40}, DType::e4m3, Device::cuda);
  const Tensor y = Tensor::empty({4, 8}, DType::bf16, Device::cuda), one = scalar_f32(1.f);
  Stream stream;
  using mxmoe::testing::error_of;
  EXPECT_NE(error_of([&] { cublaslt_gemm_fp8(x, one, w, one, y, stream); }).find("K must be a multiple of 16"),
            std::string::npos);
  const Tensor x16 = Tensor::empty({4, 48}, DType::bf16, Device::cuda);
  EXPECT_NE(error_of([&] { cublaslt_gemm_fp8(x16, one, w, one, y, stream); }).find("cublaslt_gemm_fp8: x must be"),
            std::string::npos);
  const Tensor two = Tensor::empty({2}, DType::f32, Device::cuda);
  const Tensor x48 = Tensor::empty({4, 48}, DType::e4m3, Device::cuda), w48 = Tensor::empty({8, 48}, DType::e4m3, Device::cuda);
  EXPECT_NE(error_of([&] { cublaslt_gemm_fp8(x48, two, w48, one, y, stream); }).find("scales must be one CUDA f32"),
            std::string::npos);
}
