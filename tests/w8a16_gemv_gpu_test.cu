// w8a16_gemv against the CPU oracle matmul_ref (double accumulation on the exactly dequantized
// weights) on fresh random inputs; outputs are poisoned with NaN first. Threshold: relative error
// <= 5e-3 (bf16 output rounding is ~1e-3).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <numeric>

#include "kernels/w8a16_gemv.h"
#include "tests/w8a16_test_util.h"

namespace mxmoe::testing {
namespace {

constexpr double kTol = 5e-3;

// Rows `cols` of a CPU MXFP8 [N, K] weight.
MxTensor gather_rows(const MxTensor& w, const std::vector<int64_t>& cols) {
  const int64_t k = w.elems.size(1), nc = int64_t(cols.size());
  MxTensor out = mxfp8_empty({nc, k}, Device::cpu);
  for (int64_t i = 0; i < nc; ++i) {
    std::copy_n(w.elems.data_as<uint8_t>() + cols[i] * k, k, out.elems.data_as<uint8_t>() + i * k);
    std::copy_n(w.scales.data_as<uint8_t>() + cols[i] * (k / kMxBlock), k / kMxBlock,
                out.scales.data_as<uint8_t>() + i * (k / kMxBlock));
  }
  return out;
}

// Columns `cols` of a CPU [M, N] tensor, as [M, cols] of the same dtype.
Tensor gather_cols(const Tensor& y, const std::vector<int64_t>& cols) {
  const int64_t m = y.size(0), n = y.size(1), nc = int64_t(cols.size());
  const std::vector<float> v = to_f32_vector(y);
  std::vector<float> out(size_t(m * nc));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < nc; ++j) out[size_t(i * nc + j)] = v[size_t(i * n + cols[size_t(j)])];
  Tensor t = Tensor::empty({m, nc}, DType::f32, Device::cpu);
  from_f32_vector(out, t);
  return t;
}

// Runs the kernel for x [M, K] against a CPU weight (and its device copy) and returns the relative
// error; the reference covers every column when that is cheap, else 128 random ones.
double check(int64_t m, const MxTensor& w_cpu, const MxTensor& w_gpu, bool with_bias, std::mt19937_64& rng,
             const DecodeTuning& tuning = {}) {
  const int64_t n = w_cpu.elems.size(0), k = w_cpu.elems.size(1);
  const Tensor x = random_tensor({m, k}, DType::bf16, rng);
  const Tensor bias = random_tensor({n}, DType::bf16, rng);
  const Tensor bias_gpu = bias.to(Device::cuda);
  const Tensor y = poisoned({m, n}, DType::bf16);
  w8a16_gemv(x.to(Device::cuda), w_gpu, with_bias ? &bias_gpu : nullptr, y, nullptr, tuning);
  CUDA_CHECK(cudaDeviceSynchronize());
  const Tensor y_cpu = y.to(Device::cpu);

  std::vector<int64_t> cols(static_cast<size_t>(n));
  std::iota(cols.begin(), cols.end(), 0);
  if (m * n * k > 30'000'000) {
    std::shuffle(cols.begin(), cols.end(), rng);
    cols.resize(128);
    std::sort(cols.begin(), cols.end());
  }
  const std::vector<float> bias_all = to_f32_vector(bias);
  std::vector<float> bias_cols;
  for (int64_t c : cols) bias_cols.push_back(bias_all[size_t(c)]);
  Tensor bias_sub = Tensor::empty({int64_t(cols.size())}, DType::f32, Device::cpu);
  from_f32_vector(bias_cols, bias_sub);
  Tensor ref = Tensor::empty({m, int64_t(cols.size())}, DType::f32, Device::cpu);
  matmul_ref(x, gather_rows(w_cpu, cols), with_bias ? &bias_sub : nullptr, ref);
  return rel_error(gather_cols(y_cpu, cols), ref);
}

struct Case {
  int64_t k, n;
};

TEST(W8a16Gemv, RealShapes) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  // Qwen3-30B-A3B qkv, o_proj, lm_head; Mixtral 8x7B qkv, gate/up, down (K -> N).
  for (const Case c : {Case{2048, 5120}, Case{4096, 2048}, Case{2048, 151936}, Case{4096, 6144}, Case{4096, 14336},
                       Case{14336, 4096}}) {
    const MxTensor w = random_mxfp8({c.n, c.k}, rng);
    const MxTensor w_gpu = to_device(w);
    for (int64_t m : {1, 3, 16, 17, 32})
      for (bool bias : {false, true}) {
        const double err = check(m, w, w_gpu, bias, rng);
        EXPECT_LE(err, kTol) << "K=" << c.k << " N=" << c.n << " M=" << m << " bias=" << bias;
        std::printf("K=%-6lld N=%-7lld M=%-2lld bias=%d rel_error=%.2e\n", (long long)c.k, (long long)c.n,
                    (long long)m, int(bias), err);
      }
  }
}

// Odd N (tile and group tails), K tails (below one step, not a multiple of 64 or 256) and the whole
// scale range of the fp8 -> bf16 path (scale bytes above 134 take the two-multiply route).
TEST(W8a16Gemv, OddShapes) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  for (int64_t n : {1, 200, 5000})
    for (int64_t k : {32, 96, 800, 4128}) {
      const MxTensor w = random_mxfp8({n, k}, rng, 90, 150);
      const MxTensor w_gpu = to_device(w);
      for (int64_t m : {1, 3, 16, 25, 32})
        for (bool bias : {false, true}) {
          const double err = check(m, w, w_gpu, bias, rng);
          EXPECT_LE(err, kTol) << "K=" << k << " N=" << n << " M=" << m << " bias=" << bias;
        }
    }
}

// K so large that at M = 16 a block's slice is staged in several shared-memory chunks even at the
// largest split (16 x 2816).
TEST(W8a16Gemv, LongK) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  const MxTensor w = random_mxfp8({300, 46112}, rng);
  const MxTensor w_gpu = to_device(w);
  for (int64_t m : {9, 16, 32}) EXPECT_LE(check(m, w, w_gpu, true, rng), kTol) << "M=" << m;
}

// Every forced split-K (whole-step slices, uneven last slice, K shorter than the split, clusters up
// to 16) with and without programmatic dependent launch.
TEST(W8a16Gemv, ForcedSplits) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  for (const Case c : {Case{4096, 2048}, Case{2080, 300}, Case{160, 1000}}) {
    const MxTensor w = random_mxfp8({c.n, c.k}, rng);
    const MxTensor w_gpu = to_device(w);
    for (int splits : {1, 2, 3, 5, 8, 16})
      for (bool pdl : {true, false})
        for (int64_t m : {1, 9, 16, 30}) {
          const double err = check(m, w, w_gpu, true, rng, {splits, pdl});
          EXPECT_LE(err, kTol) << "K=" << c.k << " N=" << c.n << " M=" << m << " splits=" << splits << " pdl=" << pdl;
        }
  }
}

// Back-to-back calls on one stream, each reading the previous one's output (y1 = W1 x, y2 = W2 y1,
// ...), with no host sync between: programmatic dependent launch lets a call start while its
// predecessor runs, so a call that read its input before the predecessor finished would see the
// NaN poison or stale values. Each stage is checked against the reference on the GPU's own input.
TEST(W8a16Gemv, ChainedCallsReadFinishedInputs) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  constexpr int kStages = 6;
  const int64_t k = 2048;
  for (int64_t m : {1, 16, 32}) {
    std::vector<MxTensor> w;
    std::vector<Tensor> y{random_tensor({m, k}, DType::bf16, rng).to(Device::cuda)};
    for (int i = 0; i < kStages; ++i) {
      w.push_back(random_mxfp8({k, k}, rng, 114, 116));  // rms(W) ~ 100 · 2^-12 ~ 1/sqrt(K): |y| stays O(1)
      y.push_back(poisoned({m, k}, DType::bf16));
    }
    std::vector<MxTensor> w_gpu;
    for (const MxTensor& wi : w) w_gpu.push_back(to_device(wi));
    for (int i = 0; i < kStages; ++i) w8a16_gemv(y[size_t(i)], w_gpu[size_t(i)], nullptr, y[size_t(i) + 1], nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    for (int i = 0; i < kStages; ++i) {
      Tensor ref = Tensor::empty({m, k}, DType::f32, Device::cpu);
      matmul_ref(y[size_t(i)].to(Device::cpu), w[size_t(i)], nullptr, ref);
      EXPECT_LE(rel_error(y[size_t(i) + 1].to(Device::cpu), ref), kTol) << "M=" << m << " stage " << i;
    }
  }
}

// A NaN scale byte poisons exactly its output column.
TEST(W8a16Gemv, NanScalePropagates) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  MxTensor w = random_mxfp8({64, 256}, rng);
  w.scales.data_as<uint8_t>()[5 * 8 + 3] = kE8M0Nan;  // row 5, block 3
  const Tensor x = random_tensor({2, 256}, DType::bf16, rng);
  const Tensor y = poisoned({2, 64}, DType::bf16);
  w8a16_gemv(x.to(Device::cuda), to_device(w), nullptr, y, nullptr);
  const std::vector<float> v = to_f32_vector(y.to(Device::cpu));
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 64; ++j) EXPECT_EQ(std::isnan(v[size_t(i * 64 + j)]), j == 5) << i << "," << j;
}

TEST(W8a16Gemv, BadInput) {
  MXMOE_REQUIRE_GPU();
  const MxTensor w = mxfp8_empty({64, 256}, Device::cuda);
  const Tensor y = Tensor::empty({kGemvMaxM + 1, 64}, DType::bf16, Device::cuda);  // above the decode limit
  EXPECT_THROW(w8a16_gemv(Tensor::empty({kGemvMaxM + 1, 256}, DType::bf16, Device::cuda), w, nullptr, y, nullptr),
               Error);
  EXPECT_THROW(w8a16_gemv(Tensor::empty({2, 288}, DType::bf16, Device::cuda), w, nullptr,
                          Tensor::empty({2, 64}, DType::bf16, Device::cuda), nullptr),
               Error);
  EXPECT_THROW(w8a16_gemv(Tensor::empty({2, 256}, DType::f32, Device::cuda), w, nullptr,
                          Tensor::empty({2, 64}, DType::bf16, Device::cuda), nullptr),
               Error);
  const Tensor bad_bias = Tensor::empty({63}, DType::bf16, Device::cuda);
  EXPECT_THROW(w8a16_gemv(Tensor::empty({2, 256}, DType::bf16, Device::cuda), w, &bad_bias,
                          Tensor::empty({2, 64}, DType::bf16, Device::cuda), nullptr),
               Error);
  // K % 32 != 0.
  const MxTensor odd{Tensor::empty({4, 40}, DType::e4m3, Device::cuda), Tensor::empty({4, 1}, DType::e8m0, Device::cuda)};
  EXPECT_THROW(w8a16_gemv(Tensor::empty({1, 40}, DType::bf16, Device::cuda), odd, nullptr,
                          Tensor::empty({1, 4}, DType::bf16, Device::cuda), nullptr),
               Error);
}

}  // namespace
}  // namespace mxmoe::testing
