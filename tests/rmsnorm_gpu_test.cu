// RMSNorm kernels vs the CPU reference on fresh random inputs: plain rows of several widths,
// the fused residual add, and the per-head QK-norm on a strided view of a fused QKV buffer. The
// shapes cover each way the kernel spreads a row (1, 2, 4 or 8 vectors per thread; a row over a
// few lanes, a warp, or a whole CTA with a block reduction; rows narrower than their threads).
#include <gtest/gtest.h>

#include "engine/stream.h"
#include "kernels/rmsnorm.h"
#include "test_util.h"

using namespace mxmoe;
using mxmoe::testing::fresh_seed;
using mxmoe::testing::random_tensor;
using mxmoe::testing::rel_error;

namespace {
void poison(const Tensor& t) { CUDA_CHECK(cudaMemset(t.data(), 0xFF, t.nbytes())); }  // bf16 NaN
constexpr double kTol = 2e-3;  // same roundings; only summation order and rsqrtf differ
}  // namespace

TEST(RmsNormGpu, RowsMatchReference) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  Stream stream;
  for (const auto& [t, d] : std::vector<std::pair<int64_t, int64_t>>{{1, 2048}, {7, 4096}, {33, 1024}, {300, 128}, {5, 5120}, {2, 8}, {3, 24}, {1, 16384}, {1056, 2048},
                                                                     {4000, 2048}, {600, 16384}, {9000, 128}}) {
    const Tensor x = random_tensor({t, d}, DType::bf16, rng, 4.f, 0.5f), w = random_tensor({d}, DType::bf16, rng, 0.3f, 1.f);
    Tensor ref = Tensor::empty({t, d}, DType::bf16, Device::cpu);
    rmsnorm_ref(x, w, 1e-6f, ref);
    const Tensor xd = x.to(Device::cuda), wd = w.to(Device::cuda);
    Tensor out = Tensor::empty({t, d}, DType::bf16, Device::cuda);
    poison(out);
    rmsnorm(xd, wd, 1e-6f, out, stream);
    stream.synchronize();
    EXPECT_LT(rel_error(out, ref), kTol) << t << "x" << d;
    rmsnorm(xd, wd, 1e-6f, xd, stream);  // in place
    stream.synchronize();
    EXPECT_LT(rel_error(xd, ref), kTol) << "in place " << t << "x" << d;
  }
}

TEST(RmsNormGpu, FusedResidualAddMatchesReference) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  Stream stream;
  for (const auto& [t, d] : std::vector<std::pair<int64_t, int64_t>>{{1, 2048}, {64, 4096}, {3, 2048}, {1, 4096}, {2048, 2048}}) {
    const Tensor x = random_tensor({t, d}, DType::bf16, rng), w = random_tensor({d}, DType::bf16, rng, 0.3f, 1.f);
    Tensor res = random_tensor({t, d}, DType::bf16, rng, 8.f);
    const Tensor res_d = res.to(Device::cuda), xd = x.to(Device::cuda), wd = w.to(Device::cuda);
    Tensor ref = Tensor::empty({t, d}, DType::bf16, Device::cpu);
    add_rmsnorm_ref(res, x, w, 1e-5f, ref);
    Tensor out = Tensor::empty({t, d}, DType::bf16, Device::cuda);
    poison(out);
    add_rmsnorm(res_d, xd, wd, 1e-5f, out, stream);
    stream.synchronize();
    EXPECT_EQ(rel_error(res_d, res), 0.0) << "residual sum " << t << "x" << d;
    EXPECT_LT(rel_error(out, ref), kTol) << t << "x" << d;
  }
}

TEST(RmsNormGpu, PerHeadNormOnStridedQkvView) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  Stream stream;
  const int64_t t = 19, hq = 32, hk = 4, hd = 128, width = (hq + 2 * hk) * hd;  // Qwen3-30B-A3B q|k|v
  const Tensor qkv = random_tensor({t, width}, DType::bf16, rng, 2.f), w = random_tensor({hd}, DType::bf16, rng, 0.3f, 1.f);
  const Tensor qkv_d = qkv.to(Device::cuda), wd = w.to(Device::cuda);
  for (const auto& [begin, heads] : std::vector<std::pair<int64_t, int64_t>>{{0, hq}, {hq * hd, hk}}) {
    const Tensor view = qkv.narrow(1, begin, heads * hd);  // [T, heads·hd], token stride = width
    Tensor ref = Tensor::empty({t, heads, hd}, DType::bf16, Device::cpu);
    rmsnorm_ref(view, w, 1e-6f, ref);
    Tensor out = Tensor::empty({t, heads, hd}, DType::bf16, Device::cuda);
    poison(out);
    rmsnorm(qkv_d.narrow(1, begin, heads * hd), wd, 1e-6f, out, stream);
    stream.synchronize();
    EXPECT_LT(rel_error(out, ref), kTol) << heads << " heads";
  }
  // OLMoE form: the weight spans the whole projection.
  const Tensor wq = random_tensor({hq * hd}, DType::bf16, rng, 0.3f, 1.f);
  Tensor ref = Tensor::empty({t, hq * hd}, DType::bf16, Device::cpu), out = Tensor::empty({t, hq * hd}, DType::bf16, Device::cuda);
  rmsnorm_ref(qkv.narrow(1, 0, hq * hd), wq, 1e-6f, ref);
  poison(out);
  rmsnorm(qkv_d.narrow(1, 0, hq * hd), wq.to(Device::cuda), 1e-6f, out, stream);
  stream.synchronize();
  EXPECT_LT(rel_error(out, ref), kTol);
}

TEST(RmsNormGpu, RejectsRowsWiderThanSupported) {
  MXMOE_REQUIRE_GPU();
  Stream stream;
  const int64_t d = 16384 + 8;
  const Tensor x = Tensor::empty({1, d}, DType::bf16, Device::cuda), w = Tensor::empty({d}, DType::bf16, Device::cuda);
  EXPECT_THROW(rmsnorm(x, w, 1e-6f, x, stream), Error);
}
