// CPU reference of the SiLU-gated activation against the formula in double.
#include <gtest/gtest.h>

#include <cmath>

#include "engine/error.h"
#include "kernels/activation.h"
#include "test_util.h"

using namespace mxmoe;
using mxmoe::testing::fresh_seed;
using mxmoe::testing::random_tensor;
using mxmoe::testing::rel_error;

TEST(ActivationRef, SiluMulMatchesFormula) {
  std::mt19937_64 rng(fresh_seed());
  const int64_t t = 7, inter = 40;
  const Tensor gu = random_tensor({t, 2 * inter}, DType::bf16, rng, 3.f);
  Tensor out = Tensor::empty({t, inter}, DType::bf16, Device::cpu);
  silu_mul_ref(gu, out);
  const std::vector<float> v = to_f32_vector(gu);
  std::vector<float> expect(size_t(t * inter));
  for (int64_t r = 0; r < t; ++r) {
    for (int64_t i = 0; i < inter; ++i) {
      const double g = v[size_t(r * 2 * inter + i)], u = v[size_t(r * 2 * inter + inter + i)];
      expect[size_t(r * inter + i)] = float(g / (1 + std::exp(-g)) * u);
    }
  }
  Tensor ref = Tensor::empty({t, inter}, DType::f32, Device::cpu);
  from_f32_vector(expect, ref);
  EXPECT_LT(rel_error(out, ref), 6e-3);
}

TEST(ActivationRef, BadShapesAreClearErrors) {
  const Tensor gu = Tensor::empty({2, 64}, DType::bf16, Device::cpu), out = Tensor::empty({2, 16}, DType::bf16, Device::cpu);
  EXPECT_THROW(silu_mul_ref(gu, out), Error);
}
