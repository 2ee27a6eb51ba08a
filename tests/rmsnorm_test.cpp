// CPU reference of RMSNorm: the formula in double, the fused add, the per-head (QK-norm) form on
// a strided view, and clear errors for bad shapes.
#include <gtest/gtest.h>

#include <cmath>

#include "engine/error.h"
#include "engine/numerics.h"
#include "kernels/rmsnorm.h"
#include "test_util.h"

using namespace mxmoe;
using mxmoe::testing::fresh_seed;
using mxmoe::testing::random_tensor;
using mxmoe::testing::rel_error;

TEST(RmsNormRef, MatchesFormulaInDouble) {
  std::mt19937_64 rng(fresh_seed());
  const int64_t t = 5, d = 96;
  const Tensor x = random_tensor({t, d}, DType::bf16, rng, 3.f), w = random_tensor({d}, DType::bf16, rng, 1.f, 1.f);
  Tensor out = Tensor::empty({t, d}, DType::bf16, Device::cpu);
  rmsnorm_ref(x, w, 1e-6f, out);
  const std::vector<float> xv = to_f32_vector(x), wv = to_f32_vector(w);
  std::vector<float> expect(size_t(t * d));
  for (int64_t r = 0; r < t; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < d; ++i) ss += double(xv[size_t(r * d + i)]) * xv[size_t(r * d + i)];
    const double inv = 1.0 / std::sqrt(ss / double(d) + 1e-6);
    for (int64_t i = 0; i < d; ++i) expect[size_t(r * d + i)] = float(xv[size_t(r * d + i)] * inv * wv[size_t(i)]);
  }
  Tensor ref = Tensor::empty({t, d}, DType::f32, Device::cpu);
  from_f32_vector(expect, ref);
  EXPECT_LT(rel_error(out, ref), 6e-3);  // two bf16 roundings (2^-9 each)
}

TEST(RmsNormRef, FusedAddEqualsAddThenNorm) {
  std::mt19937_64 rng(fresh_seed());
  const int64_t t = 4, d = 64;
  const Tensor x = random_tensor({t, d}, DType::bf16, rng), w = random_tensor({d}, DType::bf16, rng, 0.5f, 1.f);
  Tensor residual = random_tensor({t, d}, DType::bf16, rng);
  const std::vector<float> r0 = to_f32_vector(residual), xv = to_f32_vector(x);
  Tensor out = Tensor::empty({t, d}, DType::bf16, Device::cpu);
  add_rmsnorm_ref(residual, x, w, 1e-5f, out);
  std::vector<float> sum(r0.size());
  for (size_t i = 0; i < sum.size(); ++i) sum[i] = bf16_to_f32(f32_to_bf16(r0[i] + xv[i]));
  EXPECT_EQ(to_f32_vector(residual), sum);
  Tensor expect = Tensor::empty({t, d}, DType::bf16, Device::cpu);
  rmsnorm_ref(residual, w, 1e-5f, expect);
  EXPECT_EQ(rel_error(out, expect), 0.0);
}

TEST(RmsNormRef, PerHeadOnStridedViewNormsEachHead) {
  std::mt19937_64 rng(fresh_seed());
  const int64_t t = 3, heads = 4, hd = 32, width = 3 * heads * hd;  // q inside a [T, q|k|v] buffer
  const Tensor qkv = random_tensor({t, width}, DType::bf16, rng, 2.f), w = random_tensor({hd}, DType::bf16, rng, 1.f, 1.f);
  const Tensor q = qkv.narrow(1, 0, heads * hd);
  Tensor out = Tensor::empty({t, heads, hd}, DType::bf16, Device::cpu);
  rmsnorm_ref(q, w, 1e-6f, out);
  for (int64_t r = 0; r < t; ++r) {
    for (int64_t h = 0; h < heads; ++h) {
      Tensor head = Tensor::empty({1, hd}, DType::bf16, Device::cpu), expect = Tensor::empty({1, hd}, DType::bf16, Device::cpu);
      std::copy_n(qkv.data_as<const uint16_t>() + r * width + h * hd, hd, head.data_as<uint16_t>());
      rmsnorm_ref(head, w, 1e-6f, expect);
      EXPECT_TRUE(std::equal(expect.data_as<uint16_t>(), expect.data_as<uint16_t>() + hd,
                             out.data_as<uint16_t>() + (r * heads + h) * hd));
    }
  }
}

TEST(RmsNormRef, BadShapesAreClearErrors) {
  const Tensor x = Tensor::empty({2, 60}, DType::bf16, Device::cpu), w = Tensor::empty({64}, DType::bf16, Device::cpu);
  const Tensor out = Tensor::empty({2, 60}, DType::bf16, Device::cpu);
  EXPECT_THROW(rmsnorm_ref(x, w, 1e-6f, out), Error);
  const Tensor xf = Tensor::empty({2, 64}, DType::f32, Device::cpu), o64 = Tensor::empty({2, 64}, DType::bf16, Device::cpu);
  EXPECT_THROW(rmsnorm_ref(xf, w, 1e-6f, o64), Error);
}
