// SiLU-gated activation kernel vs the CPU reference on fresh random inputs.
#include <gtest/gtest.h>

#include "engine/stream.h"
#include "kernels/activation.h"
#include "test_util.h"

using namespace mxmoe;
using mxmoe::testing::fresh_seed;
using mxmoe::testing::random_tensor;
using mxmoe::testing::rel_error;

TEST(ActivationGpu, SiluMulMatchesReference) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  Stream stream;
  for (const auto& [t, inter] : std::vector<std::pair<int64_t, int64_t>>{{1, 768}, {13, 1408}, {256, 6144}, {3, 8}}) {
    const Tensor gu = random_tensor({t, 2 * inter}, DType::bf16, rng, 3.f);
    Tensor ref = Tensor::empty({t, inter}, DType::bf16, Device::cpu);
    silu_mul_ref(gu, ref);
    Tensor out = Tensor::empty({t, inter}, DType::bf16, Device::cuda);
    CUDA_CHECK(cudaMemset(out.data(), 0xFF, out.nbytes()));  // bf16 NaN
    silu_mul(gu.to(Device::cuda), out, stream);
    stream.synchronize();
    EXPECT_LT(rel_error(out, ref), 2e-3) << t << "x" << inter;  // expf vs std::exp may flip a bf16 rounding
  }
}
