// Shared-expert gated add vs the CPU reference (same bf16 roundings: equal within one bf16 ulp,
// since expf may differ from std::exp in the last bit).
#include <gtest/gtest.h>

#include "engine/stream.h"
#include "kernels/gated_add.h"
#include "test_util.h"

using namespace mxmoe;

TEST(GatedAddGpu, MatchesReference) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(mxmoe::testing::fresh_seed());
  const Tensor out0 = mxmoe::testing::random_tensor({19, 96}, DType::bf16, rng);
  const Tensor x = mxmoe::testing::random_tensor({19, 96}, DType::bf16, rng);
  const Tensor gate = mxmoe::testing::random_tensor({19, 1}, DType::f32, rng, 3.f);
  Tensor ref = out0.to(Device::cpu);
  add_sigmoid_gated_ref(ref, x, gate);
  Tensor got = out0.to(Device::cuda);
  Stream stream;
  add_sigmoid_gated(got, x.to(Device::cuda), gate.to(Device::cuda), stream);
  stream.synchronize();
  EXPECT_LT(mxmoe::testing::rel_error(got, ref), 4e-3);
  EXPECT_GT(mxmoe::testing::rel_error(out0, ref), 1e-2);  // the op changed the values
}
