// The gated-add reference against the formula in double (within bf16 rounding).
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/gated_add.h"
#include "test_util.h"

using namespace mxmoe;

TEST(GatedAddRef, IsOutPlusSigmoidGateTimesX) {
  std::mt19937_64 rng(mxmoe::testing::fresh_seed());
  const Tensor out0 = mxmoe::testing::random_tensor({5, 32}, DType::bf16, rng);
  const Tensor x = mxmoe::testing::random_tensor({5, 32}, DType::bf16, rng);
  const Tensor gate = mxmoe::testing::random_tensor({5}, DType::f32, rng, 2.f);
  Tensor out = out0.to(Device::cpu);
  add_sigmoid_gated_ref(out, x, gate);
  const auto o0 = to_f32_vector(out0), xv = to_f32_vector(x), g = to_f32_vector(gate);
  Tensor expect = Tensor::empty({5, 32}, DType::f32, Device::cpu);
  for (int t = 0; t < 5; ++t)
    for (int i = 0; i < 32; ++i)
      expect.data_as<float>()[t * 32 + i] = float(o0[t * 32 + i] + xv[t * 32 + i] / (1.0 + std::exp(-double(g[t]))));
  EXPECT_LT(mxmoe::testing::rel_error(out, expect), 1e-2);
}
