// W8A16 / bf16 tensor-core GEMMs (kernels/w8a16_gemm.h) against matmul_ref on fresh random inputs.
// The reference uses the same bf16 x and the exactly dequantized MXFP8 weights; the kernel rounds
// only its output to bf16 (and accumulates in fp32), so rel error <= 5e-3 leaves ~4x margin over
// bf16 rounding (~1.1e-3). y is poisoned with NaN first: unwritten elements fail. Big shapes are
// checked on a random subset of rows (the CPU reference is slow), every element for finiteness.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include "engine/error.h"
#include "engine/stream.h"
#include "kernels/w8a16_gemm.h"
#include "kernels/w8a16_gemm_tile.cuh"
#include "tests/test_util.h"
#include "tests/w8a16_test_util.h"

namespace mxmoe {
namespace {

using testing::fresh_seed;
using testing::random_tensor;
using testing::rel_error;

constexpr double kTol = 5e-3;
// MXFP8 weights: every kernel (TMA / register-A tiles and the cp.async ones); bf16 weights
// have only the cp.async kernel.
const std::vector<GemmTile> kFp8Tiles = {GemmTile::automatic, GemmTile::rs_t256_pair, GemmTile::rs_t256,
                                         GemmTile::rs_t128, GemmTile::m256_4wg, GemmTile::n128_2cta};
const std::vector<GemmTile> kBf16Tiles = {GemmTile::automatic, GemmTile::m256_4wg, GemmTile::n128_2cta};

struct CpuMx {  // MXFP8 weight on the CPU (reference) and on the GPU (kernel)
  MxTensor cpu, gpu;
};

CpuMx random_mx_weight(const Shape& shape, std::mt19937_64& rng) {
  const Tensor w = random_tensor(shape, DType::bf16, rng, 0.05f);
  CpuMx m{mxfp8_empty(shape, Device::cpu), {}};
  EXPECT_EQ(mxfp8_quantize_ref(w, m.cpu, ScaleRule::rceil), 0);
  m.gpu = {m.cpu.elems.to(Device::cuda), m.cpu.scales.to(Device::cuda)};
  return m;
}

Tensor poisoned(const Shape& shape, cudaStream_t stream) {
  Tensor y = Tensor::empty(shape, DType::bf16, Device::cuda);
  CUDA_CHECK(cudaMemsetAsync(y.data(), 0xFF, y.nbytes(), stream));  // bf16 0xFFFF = NaN
  return y;
}

// Rows [0, M) or, when M > max_rows, max_rows random rows (sorted).
std::vector<int64_t> rows_to_check(int64_t m, std::mt19937_64& rng, int64_t max_rows = 48) {
  std::vector<int64_t> rows(static_cast<size_t>(m));
  std::iota(rows.begin(), rows.end(), 0);
  if (m > max_rows) {
    std::shuffle(rows.begin(), rows.end(), rng);
    rows.resize(size_t(max_rows));
    std::sort(rows.begin(), rows.end());
  }
  return rows;
}

Tensor gather_rows(const Tensor& t, const std::vector<int64_t>& rows) {  // CPU [R, cols]
  Tensor out = Tensor::empty({int64_t(rows.size()), t.size(1)}, t.dtype(), Device::cpu);
  const size_t row_bytes = size_t(t.size(1)) * dtype_size(t.dtype());
  for (size_t i = 0; i < rows.size(); ++i)
    std::memcpy(static_cast<char*>(out.data()) + i * row_bytes,
                static_cast<const char*>(t.data()) + size_t(rows[i]) * row_bytes, row_bytes);
  return out;
}

void expect_all_finite(const Tensor& y_cpu) {
  const std::vector<float> v = to_f32_vector(y_cpu);
  const auto bad = std::find_if(v.begin(), v.end(), [](float f) { return !std::isfinite(f); });
  EXPECT_EQ(bad, v.end()) << "element " << (bad - v.begin()) << " not written or not finite";
}

// Checks rows `rows` of y (CPU) against the reference with weight w_cpu (MxTensor or Tensor).
template <class W>
void expect_rows_match(const Tensor& x_cpu, const W& w_cpu, const Tensor* bias_cpu, const Tensor& y_cpu,
                       const std::vector<int64_t>& rows, const std::string& what) {
  if (rows.empty()) return;
  const Tensor xs = gather_rows(x_cpu, rows);
  const Tensor ref = Tensor::empty({xs.size(0), y_cpu.size(1)}, DType::f32, Device::cpu);
  matmul_ref(xs, w_cpu, bias_cpu, ref);
  const double err = rel_error(gather_rows(y_cpu, rows), ref);
  EXPECT_LE(err, kTol) << what;
}

const char* tile_name(GemmTile t) {
  switch (t) {
    case GemmTile::rs_t256_pair: return "rs 256 tokens, CTA pairs";
    case GemmTile::rs_t256: return "rs 256 tokens";
    case GemmTile::rs_t128: return "rs 128 tokens";
    case GemmTile::m256_4wg: return "256x128 4wg";
    case GemmTile::n128_2cta: return "128x128 2cta";
    default: return "auto";
  }
}

struct DenseCase {
  int64_t m, n, k;
  bool bias;
};

TEST(W8A16Gemm, DenseMatchesReference) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  Stream stream;
  // N tails (200, 197 odd, 136, 392, 5128 = 5120 + 8: not multiples of 128), K tails (96, 160,
  // 224, 1056, 2080: 32 x odd), M from a single row to several tiles with a partial one (257, 333),
  // so tiles of 1, 2, 3 and 4 64-token blocks (wgmma N = 64 ... 256) all run.
  const DenseCase cases[] = {{1, 200, 96, true},      {3, 200, 96, false},    {16, 5128, 160, true},
                             {128, 256, 2048, false}, {160, 264, 128, true},  {200, 197, 64, true},
                             {300, 384, 32, false},   {333, 136, 224, true},  {257, 392, 1056, false},
                             {2048, 5128, 2080, true}};
  for (const DenseCase& c : cases) {
    const Tensor x = random_tensor({c.m, c.k}, DType::bf16, rng);
    const Tensor bias = random_tensor({c.n}, DType::bf16, rng);
    const CpuMx w = random_mx_weight({c.n, c.k}, rng);
    const Tensor xg = x.to(Device::cuda), bg = bias.to(Device::cuda);
    for (GemmTile tile : kFp8Tiles) {
      const Tensor y = poisoned({c.m, c.n}, stream);
      w8a16_gemm(xg, w.gpu, c.bias ? &bg : nullptr, y, stream, tile);
      stream.synchronize();
      const Tensor yc = y.to(Device::cpu);
      expect_all_finite(yc);
      expect_rows_match(x, w.cpu, c.bias ? &bias : nullptr, yc, rows_to_check(c.m, rng),
                        cat("M=", c.m, " N=", c.n, " K=", c.k, " bias=", c.bias, " tile=", tile_name(tile)));
    }
  }
  // The public entry point (automatic tile) too.
  const Tensor x = random_tensor({5, 64}, DType::bf16, rng);
  const CpuMx w = random_mx_weight({72, 64}, rng);
  const Tensor y = poisoned({5, 72}, stream);
  w8a16_gemm(x.to(Device::cuda), w.gpu, nullptr, y, stream);
  stream.synchronize();
  expect_rows_match(x, w.cpu, nullptr, y.to(Device::cpu), rows_to_check(5, rng), "public w8a16_gemm");
}

// Group sizes summing to m: "uneven" (skewed random loads, every third group empty), "one" (one
// random group holds every row), "single" (m rows spread, possibly 1).
std::vector<int> group_offsets(int64_t m, int64_t groups, const std::string& mode, std::mt19937_64& rng) {
  std::vector<double> p(size_t(groups), 0.0);
  if (mode == "one") {
    p[size_t(std::uniform_int_distribution<int64_t>(0, groups - 1)(rng))] = 1.0;
  } else {
    std::normal_distribution<double> nd(0.0, 1.5);
    for (int64_t g = 0; g < groups; ++g) p[size_t(g)] = g % 3 == 1 ? 0.0 : std::exp(nd(rng));
  }
  std::discrete_distribution<int64_t> pick(p.begin(), p.end());
  std::vector<int> counts(size_t(groups), 0);
  for (int64_t i = 0; i < m; ++i) ++counts[size_t(pick(rng))];
  std::vector<int> offsets(size_t(groups) + 1, 0);
  for (int64_t g = 0; g < groups; ++g) offsets[size_t(g) + 1] = offsets[size_t(g)] + counts[size_t(g)];
  return offsets;
}

Tensor offsets_tensor(const std::vector<int>& offsets) {
  Tensor t = Tensor::empty({int64_t(offsets.size())}, DType::i32, Device::cpu);
  std::memcpy(t.data(), offsets.data(), offsets.size() * sizeof(int));
  return t.to(Device::cuda);
}

// The rows of group g (offsets as group_offsets gives them) to check: all or a random subset.
std::vector<int64_t> group_rows_to_check(const std::vector<int>& offsets, int64_t g, int64_t k, std::mt19937_64& rng) {
  const int64_t begin = offsets[size_t(g)];
  std::vector<int64_t> r = rows_to_check(offsets[size_t(g) + 1] - begin, rng, k >= 1024 ? 8 : 48);
  for (int64_t& i : r) i += begin;
  return r;
}

struct GroupedCase {
  int64_t m, groups, n, k;
  const char* mode;
};

const GroupedCase kGroupedCases[] = {
    {1000, 8, 200, 96, "uneven"}, {1000, 8, 200, 96, "one"}, {1, 8, 264, 64, "uneven"},
    {4096, 128, 264, 160, "uneven"}, {4096, 128, 136, 64, "one"}, {3000, 8, 1536, 2048, "uneven"}};

// Runs `gemm(x, offsets, y, tile)` for every grouped case and tile and checks each group's rows
// against matmul_ref with that group's weight (weight(g) gives the CPU reference weight).
template <class MakeWeight, class Gemm>
void check_grouped(const std::vector<GemmTile>& tiles, MakeWeight make_weight, Gemm gemm) {
  std::mt19937_64 rng(fresh_seed());
  Stream stream;
  for (const GroupedCase& c : kGroupedCases) {
    const Tensor x = random_tensor({c.m, c.k}, DType::bf16, rng);
    const auto w = make_weight(Shape{c.groups, c.n, c.k}, rng);
    const std::vector<int> offsets = group_offsets(c.m, c.groups, c.mode, rng);
    const Tensor off = offsets_tensor(offsets), xg = x.to(Device::cuda);
    for (GemmTile tile : tiles) {
      const Tensor y = poisoned({c.m, c.n}, stream);
      gemm(xg, w, off, y, stream, tile);
      stream.synchronize();
      const Tensor yc = y.to(Device::cpu);
      expect_all_finite(yc);
      for (int64_t g = 0; g < c.groups; ++g) {
        expect_rows_match(x, w.select_cpu(g), nullptr, yc, group_rows_to_check(offsets, g, c.k, rng),
                          cat("M=", c.m, " G=", c.groups, " N=", c.n, " K=", c.k, " ", c.mode, " group ", g,
                              " tile=", tile_name(tile)));
      }
    }
  }
}

struct MxGroupWeight {
  CpuMx w;
  MxTensor select_cpu(int64_t g) const { return {w.cpu.elems.select(g), w.cpu.scales.select(g)}; }
};
struct Bf16GroupWeight {
  Tensor cpu, gpu;
  Tensor select_cpu(int64_t g) const { return cpu.select(g); }
};

TEST(W8A16Gemm, GroupedMatchesReference) {
  MXMOE_REQUIRE_GPU();
  check_grouped(kFp8Tiles,
                [](const Shape& s, std::mt19937_64& rng) { return MxGroupWeight{random_mx_weight(s, rng)}; },
                [](const Tensor& x, const MxGroupWeight& w, const Tensor& off, const Tensor& y, cudaStream_t st,
                   GemmTile tile) { w8a16_grouped_gemm(x, w.w.gpu, off, y, st, tile); });
}

TEST(W8A16Gemm, Bf16GroupedMatchesReference) {
  MXMOE_REQUIRE_GPU();
  check_grouped(
      kBf16Tiles,
      [](const Shape& s, std::mt19937_64& rng) {
        Tensor w = random_tensor(s, DType::bf16, rng, 0.05f);
        return Bf16GroupWeight{w, w.to(Device::cuda)};
      },
      [](const Tensor& x, const Bf16GroupWeight& w, const Tensor& off, const Tensor& y, cudaStream_t st,
         GemmTile tile) { bf16_grouped_gemm(x, w.gpu, off, y, st, tile); });
}

// SiLU(x·gateᵀ) ⊙ (x·upᵀ) for rows `rows` of x against group weight w (MXFP8 [2I, K], gate rows first).
Tensor silu_mul_rows_ref(const Tensor& x_cpu, const MxTensor& w, const std::vector<int64_t>& rows) {
  const Tensor xs = gather_rows(x_cpu, rows);
  const int64_t inter = w.elems.size(0) / 2;
  const Tensor gate_up = Tensor::empty({xs.size(0), 2 * inter}, DType::f32, Device::cpu);
  matmul_ref(xs, w, nullptr, gate_up);
  Tensor act = Tensor::empty({xs.size(0), inter}, DType::f32, Device::cpu);
  const float* gu = gate_up.data_as<const float>();
  float* out = act.data_as<float>();
  for (int64_t r = 0; r < xs.size(0); ++r)
    for (int64_t i = 0; i < inter; ++i) {
      const double g = gu[r * 2 * inter + i], u = gu[r * 2 * inter + inter + i];
      out[r * inter + i] = float(g / (1.0 + std::exp(-g)) * u);
    }
  return act;
}

// The gated form (MoE prefill gate/up): every grouped case, I = N/2 from 50 to 768 (tails of the
// 64-column tiles included), both register-A tile widths and the automatic choice. The kernel
// rounds only act to bf16, so the same tolerance holds.
TEST(W8A16Gemm, GroupedSiluMulMatchesReference) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  Stream stream;
  for (const GroupedCase& c : kGroupedCases) {
    const Tensor x = random_tensor({c.m, c.k}, DType::bf16, rng);
    const CpuMx w = random_mx_weight({c.groups, c.n, c.k}, rng);
    const std::vector<int> offsets = group_offsets(c.m, c.groups, c.mode, rng);
    const Tensor off = offsets_tensor(offsets), xg = x.to(Device::cuda);
    for (GemmTile tile : {GemmTile::automatic, GemmTile::rs_t256, GemmTile::rs_t128}) {
      const Tensor act = poisoned({c.m, c.n / 2}, stream);
      w8a16_grouped_gemm_silu_mul(xg, w.gpu, off, act, stream, tile);
      stream.synchronize();
      const Tensor ac = act.to(Device::cpu);
      expect_all_finite(ac);
      for (int64_t g = 0; g < c.groups; ++g) {
        const std::vector<int64_t> r = group_rows_to_check(offsets, g, c.k, rng);
        if (r.empty()) continue;
        const MxTensor wg{w.cpu.elems.select(g), w.cpu.scales.select(g)};
        EXPECT_LE(rel_error(gather_rows(ac, r), silu_mul_rows_ref(x, wg, r)), kTol)
            << "M=" << c.m << " G=" << c.groups << " I=" << c.n / 2 << " K=" << c.k << " " << c.mode << " group " << g
            << " tile=" << tile_name(tile);
      }
    }
  }
}

// The grouped GEMM reads offsets on the device, so it can be captured once and replayed after the
// offsets change (new routing) without re-capturing.
TEST(W8A16Gemm, GroupedReplaysInCudaGraph) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  Stream stream;
  const int64_t m = 700, groups = 8, n = 136, k = 96;
  const Tensor x = random_tensor({m, k}, DType::bf16, rng);
  const CpuMx w = random_mx_weight({groups, n, k}, rng);
  const Tensor xg = x.to(Device::cuda);
  Tensor off = offsets_tensor(group_offsets(m, groups, "uneven", rng));
  const Tensor y = poisoned({m, n}, stream);
  w8a16_grouped_gemm(xg, w.gpu, off, y, stream);  // first call outside capture (one-time setup)
  stream.synchronize();
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  w8a16_grouped_gemm(xg, w.gpu, off, y, stream);
  CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  const std::vector<int> offsets = group_offsets(m, groups, "uneven", rng);
  off.copy_from(offsets_tensor(offsets));
  CUDA_CHECK(cudaDeviceSynchronize());  // copy_from runs on the legacy stream
  CUDA_CHECK(cudaMemsetAsync(y.data(), 0xFF, y.nbytes(), stream));
  CUDA_CHECK(cudaGraphLaunch(exec, stream));
  stream.synchronize();
  const Tensor yc = y.to(Device::cpu);
  expect_all_finite(yc);
  for (int64_t g = 0; g < groups; ++g) {
    std::vector<int64_t> r(size_t(offsets[size_t(g) + 1] - offsets[size_t(g)]));
    std::iota(r.begin(), r.end(), int64_t(offsets[size_t(g)]));
    expect_rows_match(x, MxTensor{w.cpu.elems.select(g), w.cpu.scales.select(g)}, nullptr, yc, r,
                      cat("graph replay, group ", g));
  }
  CUDA_CHECK(cudaGraphExecDestroy(exec));
  CUDA_CHECK(cudaGraphDestroy(graph));
}

// Scale bytes across the whole useful range: the kernels turn e4m3 into bf16 times 2^-120 and
// multiply by 2^(s-7) where every scale of a 4-K-step group is below 128; other groups take the
// wide path (kernels/w8a16_gemm_dequant.cuh). Each range is its own weight (a wrong tiny block
// would vanish beside huge ones); every e4m3 code but NaN occurs, subnormals included; 120-134 and
// 100-160 mix both paths inside a warp. Up to 200 keeps y finite in bf16.
TEST(W8A16Gemm, ScaleRangeMatchesReference) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  Stream stream;
  const int64_t m = 300, n = 264, k = 480;
  const Tensor x = random_tensor({m, k}, DType::bf16, rng);
  const Tensor xg = x.to(Device::cuda);
  const std::pair<int, int> ranges[] = {{0, 12}, {120, 134}, {135, 160}, {180, 200}, {100, 160}};
  for (const auto& [lo, hi] : ranges) {
    const MxTensor w = testing::random_mxfp8({n, k}, rng, lo, hi);
    const MxTensor wg = testing::to_device(w);
    for (GemmTile tile : kFp8Tiles) {
      const Tensor y = poisoned({m, n}, stream);
      w8a16_gemm(xg, wg, nullptr, y, stream, tile);
      stream.synchronize();
      const Tensor yc = y.to(Device::cpu);
      expect_all_finite(yc);
      expect_rows_match(x, w, nullptr, yc, rows_to_check(m, rng), cat("scales ", lo, "..", hi, " tile=", tile_name(tile)));
    }
  }
}

TEST(W8A16Gemm, RejectsBadArguments) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  Stream stream;
  const CpuMx w = random_mx_weight({64, 96}, rng);
  const Tensor x_bad = random_tensor({4, 64}, DType::bf16, rng).to(Device::cuda);  // K 64 != 96
  const Tensor y = Tensor::empty({4, 64}, DType::bf16, Device::cuda);
  EXPECT_THROW(w8a16_gemm(x_bad, w.gpu, nullptr, y, stream), Error);
  const Tensor x_f32 = Tensor::empty({4, 96}, DType::f32, Device::cuda);
  EXPECT_THROW(w8a16_gemm(x_f32, w.gpu, nullptr, y, stream), Error);
  const CpuMx wg = random_mx_weight({2, 64, 96}, rng);
  const Tensor x = random_tensor({4, 96}, DType::bf16, rng).to(Device::cuda);
  const Tensor off_short = offsets_tensor({0, 4});  // needs G + 1 = 3 entries
  EXPECT_THROW(w8a16_grouped_gemm(x, wg.gpu, off_short, y, stream), Error);
  const Tensor act = Tensor::empty({4, 32}, DType::bf16, Device::cuda);  // I = 64 / 2
  EXPECT_NO_THROW(w8a16_grouped_gemm_silu_mul(x, wg.gpu, offsets_tensor({0, 1, 4}), act, stream));
  EXPECT_THROW(w8a16_grouped_gemm_silu_mul(x, wg.gpu, offsets_tensor({0, 1, 4}), y, stream), Error);  // act [4, 64]
  EXPECT_THROW(w8a16_grouped_gemm_silu_mul(x, wg.gpu, offsets_tensor({0, 1, 4}), act, stream, GemmTile::m256_4wg),
               Error);
  const CpuMx odd = random_mx_weight({2, 63, 96}, rng);  // 63 rows: not gate + up
  EXPECT_THROW(w8a16_grouped_gemm_silu_mul(x, odd.gpu, offsets_tensor({0, 1, 4}), act, stream), Error);
  const Tensor bias_bad = Tensor::empty({63}, DType::bf16, Device::cuda);
  EXPECT_THROW(w8a16_gemm(x, w.gpu, &bias_bad, y, stream), Error);
}

}  // namespace
}  // namespace mxmoe
