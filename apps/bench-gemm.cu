// Prefill GEMM throughput (issues 4 and 5): our W8A16 tensor-core GEMM (MXFP8 weights) against
// cuBLASLt bf16 on the same shape, in one table, with cuBLASLt's FP8 per-tensor GEMM (e4m3 x and W,
// fast accumulation) as the ceiling of an fp8-weight GEMM on this GPU. Dense: model linear shapes at M = 2048, 4096,
// weights rotated through enough copies (>= 4x L2) that they are read from DRAM as in a real
// forward pass. Grouped: 4096 tokens routed top-k over E experts with skewed random loads,
// against one dense cuBLASLt GEMM of the same total rows (same flops). Median of 30 timed runs
// after warm-up, CUDA events.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "apps/bench_util.h"
#include "engine/gpu_info.h"
#include "kernels/cublaslt_gemm.h"
#include "kernels/moe_permute.h"
#include "kernels/w8a16_gemm_tile.cuh"

using namespace mxmoe;

namespace {

// Copies of a weight so that together they exceed 4x L2 (at most 16).
int rotation(size_t bytes) {
  const size_t want = size_t(4) * size_t(gpu_info().l2_bytes);
  return int(std::clamp<size_t>((want + bytes - 1) / bytes, 1, 16));
}

double tflops(double flops, double ms) { return flops / (ms * 1e-3) / 1e12; }

// The MXFP8 variants in the table's column order; the last is the automatic choice.
const GemmTile kVariants[] = {GemmTile::rs_t256, GemmTile::rs_t128, GemmTile::m256_4wg, GemmTile::n128_2cta,
                              GemmTile::rs_t256_pair, GemmTile::automatic};

// TFLOP/s of cuBLASLt's FP8 per-tensor GEMM y[M, N] = x[M, K]·w[N, K]ᵀ over the rotated e4m3 weights,
// x (bf16) quantized here to its MXFP8 elements, or -1 where cuBLASLt refuses it (printed "-").
double fp8_ceiling(const Tensor& x, const std::vector<Tensor>& w, const Tensor& y, double flops, cudaStream_t stream) {
  const MxTensor x8 = mxfp8_empty(x.shape(), Device::cuda);  // x [M, K] bf16 as e4m3
  mxfp8_quantize(x, x8, ScaleRule::rceil, stream);
  const Tensor one = bench::device_scalar(1.f);
  return bench::unless_refused("cuBLASLt fp8", [&] {
    return tflops(flops, bench::median_ms(stream, [&](int i) {
      cublaslt_gemm_fp8(x8.elems, one, w[size_t(i) % w.size()], one, y, stream);
    }, 5, 30));
  });
}

// ours: TFLOP/s per kVariants entry.
void print_row(const char* name, int64_t m, int64_t n, int64_t k, const std::vector<double>& ours, double t_lt,
               double t_bf16, double t_fp8) {
  std::printf("| %-26s | %5ld | %5ld | %5ld |", name, long(m), long(n), long(k));
  for (double t : ours) std::printf(" %6.0f |", t);
  const double vs_fp8 = t_fp8 > 0 ? ours.back() / t_fp8 : -1;
  std::printf(" %5s | %6.0f | %5.2f | %5.2f | %6s | %5s |\n", bench::or_dash(t_bf16, "%.0f").c_str(), t_lt,
              ours.back() / t_lt, ours[2] / t_lt, bench::or_dash(t_fp8, "%.0f").c_str(),
              bench::or_dash(vs_fp8, "%.2f").c_str());
  std::fflush(stdout);
}

template <class Run>
std::vector<double> run_variants(Run run) {
  std::vector<double> out;
  for (GemmTile tile : kVariants) out.push_back(run(tile));
  return out;
}

void bench_dense(const char* name, int64_t m, int64_t n, int64_t k, cudaStream_t stream) {
  const Tensor x = bench::random_bf16({m, k}, 1, 1.f, stream);
  const Tensor y = Tensor::empty({m, n}, DType::bf16, Device::cuda);
  const int copies = rotation(size_t(n * k) * 2);  // bf16 size: cuBLASLt's copies; fp8 uses as many
  std::vector<Tensor> w16;
  std::vector<MxTensor> w8;
  for (int i = 0; i < copies; ++i) {
    w16.push_back(bench::random_bf16({n, k}, 100 + i, 0.05f, stream));
    w8.push_back(mxfp8_empty({n, k}, Device::cuda));
    mxfp8_quantize(w16.back(), w8.back(), ScaleRule::rceil, stream);
  }
  const double flops = 2.0 * double(m) * double(n) * double(k);
  auto ours = [&](GemmTile tile) {
    return tflops(flops, bench::median_ms(stream, [&](int i) { w8a16_gemm(x, w8[size_t(i % copies)], nullptr, y, stream, tile); },
                                          5, 30));
  };
  const double t_lt = tflops(
      flops, bench::median_ms(stream, [&](int i) { cublaslt_gemm_bf16(x, w16[size_t(i % copies)], nullptr, y, stream); }, 5, 30));
  std::vector<Tensor> w8_elems;
  for (const MxTensor& w : w8) w8_elems.push_back(w.elems);
  print_row(name, m, n, k, run_variants(ours), t_lt, -1, fp8_ceiling(x, w8_elems, y, flops, stream));
}

// Offsets of tokens x top_k rows routed over `experts` with skewed popularity (log-normal expert
// weights, Gumbel top-k per token, distinct experts per token).
std::vector<int> routed_offsets(int64_t tokens, int experts, int top_k, std::mt19937_64& rng) {
  std::normal_distribution<double> nd(0.0, 0.7);
  std::vector<double> logp(static_cast<size_t>(experts));
  for (double& v : logp) v = nd(rng);
  std::uniform_real_distribution<double> u(1e-12, 1.0);
  std::vector<int> counts(static_cast<size_t>(experts), 0);
  std::vector<std::pair<double, int>> score(static_cast<size_t>(experts));
  for (int64_t t = 0; t < tokens; ++t) {
    for (int e = 0; e < experts; ++e) score[size_t(e)] = {logp[size_t(e)] - std::log(-std::log(u(rng))), e};
    std::partial_sort(score.begin(), score.begin() + top_k, score.end(), std::greater<>());
    for (int s = 0; s < top_k; ++s) ++counts[size_t(score[size_t(s)].second)];
  }
  std::vector<int> offsets(size_t(experts) + 1, 0);
  std::partial_sum(counts.begin(), counts.end(), offsets.begin() + 1);
  return offsets;
}

// routed_offsets with a fixed seed, on the device.
Tensor routed_offsets_device(int64_t tokens, int experts, int top_k) {
  std::mt19937_64 rng(7);
  const std::vector<int> offsets = routed_offsets(tokens, experts, top_k, rng);
  Tensor off = Tensor::empty({experts + 1}, DType::i32, Device::cpu);
  std::memcpy(off.data(), offsets.data(), offsets.size() * sizeof(int));
  return off.to(Device::cuda);
}

void bench_grouped(const char* name, int64_t tokens, int experts, int top_k, int64_t n, int64_t k,
                   cudaStream_t stream) {
  const Tensor off = routed_offsets_device(tokens, experts, top_k);
  const int64_t m = tokens * top_k;
  const Tensor x = bench::random_bf16({m, k}, 2, 1.f, stream);
  const Tensor y = Tensor::empty({m, n}, DType::bf16, Device::cuda);
  const Tensor w16 = bench::random_bf16({experts, n, k}, 3, 0.05f, stream);
  const MxTensor w8 = mxfp8_empty({experts, n, k}, Device::cuda);
  mxfp8_quantize(w16, w8, ScaleRule::rceil, stream);
  const double flops = 2.0 * double(m) * double(n) * double(k);
  auto ours = [&](GemmTile tile) {
    return tflops(flops, bench::median_ms(stream, [&](int) { w8a16_grouped_gemm(x, w8, off, y, stream, tile); }, 5, 30));
  };
  const double t_bf16 = tflops(
      flops, bench::median_ms(stream, [&](int) { bf16_grouped_gemm(x, w16, off, y, stream, GemmTile::automatic); }, 5, 30));
  const Tensor w_dense = w16.select(0);  // [n, k]: a dense GEMM of the same total rows
  const double t_lt =
      tflops(flops, bench::median_ms(stream, [&](int) { cublaslt_gemm_bf16(x, w_dense, nullptr, y, stream); }, 5, 30));
  print_row(name, m, n, k, run_variants(ours), t_lt, t_bf16, fp8_ceiling(x, {w8.elems.select(0)}, y, flops, stream));
}

// The MoE prefill gate/up with its activation: the grouped GEMM storing [rows, 2I] and the
// silu_mul pass (two launches), against w8a16_grouped_gemm_silu_mul (SiLU·up in the epilogue).
void bench_gated(const char* name, int64_t tokens, int experts, int top_k, int64_t inter, int64_t k,
                 cudaStream_t stream) {
  const Tensor off = routed_offsets_device(tokens, experts, top_k);
  const int64_t m = tokens * top_k;
  const Tensor x = bench::random_bf16({m, k}, 2, 1.f, stream);
  const Tensor gate_up = Tensor::empty({m, 2 * inter}, DType::bf16, Device::cuda);
  const Tensor act = Tensor::empty({m, inter}, DType::bf16, Device::cuda);
  const MxTensor w8 = mxfp8_empty({experts, 2 * inter, k}, Device::cuda);
  mxfp8_quantize(bench::random_bf16({experts, 2 * inter, k}, 3, 0.05f, stream), w8, ScaleRule::rceil, stream);
  const double flops = 2.0 * double(m) * double(2 * inter) * double(k);
  const double two = bench::median_ms(stream, [&](int) {
    w8a16_grouped_gemm(x, w8, off, gate_up, stream);
    moe_silu_mul(gate_up, act, stream);
  }, 5, 30);
  const double one =
      bench::median_ms(stream, [&](int) { w8a16_grouped_gemm_silu_mul(x, w8, off, act, stream); }, 5, 30);
  std::printf("| %-24s | %6ld | %6ld | %5ld | %8.1f (%4.0f) | %8.1f (%4.0f) | %5.3f |\n", name, long(m), long(inter),
              long(k), two * 1e3, tflops(flops, two), one * 1e3, tflops(flops, one), one / two);
  std::fflush(stdout);
}

}  // namespace

// bench-gemm [dense|grouped|gated]: one section of the tables (default all).
int main(int argc, char** argv) {
  const std::string only = argc > 1 ? argv[1] : "";
  const auto section = [&](const char* name) { return only.empty() || only == name; };
  Stream stream;
  std::printf("TFLOP/s; ratio = ours (auto) / cuBLASLt bf16 on the same shape (grouped: dense GEMM of the same "
              "rows); old = the cp.async kernel (256x128 4wg) / cuBLASLt. rs = TMA + register-A wgmma kernel. "
              "bf16-grp = bf16_grouped_gemm. fp8 = cuBLASLt FP8 per-tensor (e4m3 x and W, fast accumulation; "
              "grouped: dense of the same rows), the ceiling; auto/fp8 = ours against it.\n\n");
  std::printf("| shape | M | N | K | rs 256 tok | rs 128 tok | old 256x128 4wg | old 128x128 2cta | rs 256 pair | auto | "
              "bf16-grp | cuBLASLt | ratio | old ratio | fp8 | auto/fp8 |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  struct Dense {
    const char* name;
    int64_t n, k;
  };
  const Dense shapes[] = {{"qwen3-30b qkv 2048->5120", 5120, 2048},
                          {"qwen3-30b o 4096->2048", 2048, 4096},
                          {"mixtral qkv 4096->6144", 6144, 4096},
                          {"mixtral w13 4096->14336", 14336, 4096},
                          {"mixtral w2 14336->4096", 4096, 14336}};
  if (section("dense"))
    for (int64_t m : {2048, 4096})
      for (const Dense& s : shapes) bench_dense(s.name, m, s.n, s.k, stream);
  if (section("grouped")) {
    for (int64_t tokens : {2048, 4096}) {  // ~128 and ~256 rows per expert
      bench_grouped("qwen3 moe w13 E128 k8", tokens, 128, 8, 1536, 2048, stream);
      bench_grouped("qwen3 moe w2 E128 k8", tokens, 128, 8, 2048, 768, stream);
    }
    // The same rows as one dense GEMM: what grouping (tile lookup, short tails, 128 weights) costs.
    bench_dense("qwen3 w13 rows, dense", 32768, 1536, 2048, stream);
    bench_dense("qwen3 w2 rows, dense", 32768, 2048, 768, stream);
    bench_grouped("mixtral moe w13 E8 k2", 4096, 8, 2, 28672, 4096, stream);
    bench_grouped("mixtral moe w2 E8 k2", 4096, 8, 2, 4096, 14336, stream);
  }
  if (!section("gated")) return 0;
  std::printf("\nMoE gate/up + SiLU·up, µs (TFLOP/s of the GEMM): grouped GEMM then silu_mul vs SiLU·up in the "
              "GEMM epilogue (w8a16_grouped_gemm_silu_mul)\n\n| experts | rows | I | K | GEMM + silu_mul | gated GEMM "
              "| ratio |\n|---|---|---|---|---|---|---|\n");
  for (int64_t tokens : {2048, 4096}) {
    bench_gated("qwen3 w13 E128 k8", tokens, 128, 8, 768, 2048, stream);
    bench_gated("mixtral w13 E8 k2", tokens, 8, 2, 14336, 4096, stream);
  }
  return 0;
}
