// Decode attention over the paged KV cache: Qwen3-30B-A3B heads (32 query / 4 KV, head_dim 128)
// and Mixtral heads (32 / 8), block size 16. GB/s of K/V bytes read, as a fraction of the device
// copy bandwidth measured in the same run (decode is bandwidth-bound at long contexts; at short
// ones and batch 1 it is latency-bound and the time per call is what counts).
// Each shape runs the chosen split count in both launch forms (DecodeLaunch): the split kernel
// then a merging kernel (the default; GB/s and the copy fraction are of this form), with and
// without programmatic dependent launch (set_pdl_enabled), and one merging launch (with PDL).
// Calls follow each other in the graph, so PDL overlaps one call's launch with the previous
// call's tail, as it would with the neighbouring kernels of a decode step. Batch 1 sweeps forced
// split counts (default form).
// The decode graphs size the split by a power-of-two context bucket, so "640 in 1024" is the
// bench's decode (512 prompt + 256 new tokens) as it runs there.
// Blocks are scattered in random order and the cache is rotated over enough copies to exceed L2;
// calls are timed from CUDA-graph replays (as the decode loop runs them).
// Prefill (causal full prompts: 4 x 2048 tokens at 4 and 8 KV heads, 1 x 8192) reports TFLOP/s of
// the prefill kernel (its default 128-query tiles and 64-query ones) and of the per-token kernel
// forced, against cuBLASLt bf16 (8192^3) in the same run.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <tuple>

#include "apps/bench_util.h"
#include "kernels/attention.h"
#include "kernels/cublaslt_gemm.h"
#include "kernels/pdl_switch.h"

using namespace mxmoe;

namespace {

constexpr int kHeads = 32, kHeadDim = 128, kBlock = 16;

struct Setup {
  int kv_heads = 0;
  Tensor k_cache, v_cache, q, out, workspace;
  std::vector<AttentionBatch> batches;  // one per cache copy
};

// `copies` disjoint sets of `batch` sequences of `ctx` cached tokens, `q_len` queries each;
// max_seq_len = bucket (>= ctx), with block tables (and blocks) for the whole bucket.
Setup make_setup(int kv_heads, int batch, int ctx, int64_t bucket, int q_len, int copies, std::mt19937_64& rng) {
  const int64_t per_seq = (std::max<int64_t>(ctx, bucket) + kBlock - 1) / kBlock, blocks = per_seq * batch * copies;
  Setup s;
  s.kv_heads = kv_heads;
  const Shape shape{blocks, kv_heads, kBlock, kHeadDim};
  // Random values (tensor-core timings depend on the data: constant operands run cooler and faster).
  s.k_cache = bench::random_bf16(shape, rng(), 1.f, nullptr);
  s.v_cache = bench::random_bf16(shape, rng(), 1.f, nullptr);
  std::vector<int32_t> perm(static_cast<size_t>(blocks));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  const int64_t tokens = int64_t(batch) * q_len;
  for (int c = 0; c < copies; ++c) {
    Tensor table = Tensor::empty({batch, per_seq}, DType::i32, Device::cpu);
    Tensor cu = Tensor::empty({batch + 1}, DType::i32, Device::cpu), lens = Tensor::empty({batch}, DType::i32, Device::cpu);
    std::copy_n(perm.begin() + int64_t(c) * batch * per_seq, batch * per_seq, table.data_as<int32_t>());
    for (int b = 0; b <= batch; ++b) cu.data_as<int32_t>()[b] = b * q_len;
    std::fill_n(lens.data_as<int32_t>(), batch, ctx);
    s.batches.push_back({table.to(Device::cuda), cu.to(Device::cuda), lens.to(Device::cuda), std::max<int64_t>(ctx, bucket)});
  }
  s.q = bench::random_bf16({tokens, kHeads, kHeadDim}, rng(), 1.f, nullptr);
  s.out = Tensor::empty({tokens, kHeads, kHeadDim}, DType::bf16, Device::cuda);
  const AttentionTuning most{128};  // room for any forced split count
  s.workspace = Tensor::empty(
      {int64_t(paged_attention_workspace_bytes(tokens, kHeads, kv_heads, kHeadDim, most))}, DType::u8, Device::cuda);
  CUDA_CHECK(cudaDeviceSynchronize());  // the fills ran on the legacy stream
  return s;
}

// Milliseconds per call, from a CUDA graph of 16 calls rotating over the cache copies.
double time_ms(Setup& s, cudaStream_t stream, const AttentionTuning& tuning = {}) {
  return bench::graph_ms_per_call(stream, 16, [&](int i) {
    paged_attention(s.q, s.k_cache, s.v_cache, s.batches[size_t(i) % s.batches.size()], 1.f / std::sqrt(float(kHeadDim)),
                    s.workspace, s.out, stream, tuning);
  });
}

// Milliseconds per prefill call (milliseconds-long kernels: plain launches, median of 10).
double prefill_ms(Setup& s, cudaStream_t stream, const AttentionTuning& tuning = {}) {
  return bench::median_ms(stream, [&](int) {
    paged_attention(s.q, s.k_cache, s.v_cache, s.batches[0], 1.f / std::sqrt(float(kHeadDim)), s.workspace, s.out,
                    stream, tuning);
  }, 2, 10);
}

// The bf16 tensor-core rate the prefill is compared with: cuBLASLt y = x·Wᵀ at 8192^3.
double cublaslt_bf16_tflops(cudaStream_t stream) {
  constexpr int64_t n = 8192;
  const Tensor x = bench::random_bf16({n, n}, 2, 1.f, stream), w = bench::random_bf16({n, n}, 3, 1.f, stream);
  const Tensor y = Tensor::empty({n, n}, DType::bf16, Device::cuda);
  const double ms = bench::median_ms(stream, [&](int) { cublaslt_gemm_bf16(x, w, nullptr, y, stream); });
  return 2.0 * n * n * n / (ms * 1e-3) / 1e12;
}

int copies_for(double kv_bytes) { return int(std::clamp(std::ceil(256e6 / kv_bytes), 1.0, 16.0)); }  // > 50 MB L2

}  // namespace

int main() {
  Stream stream;
  std::mt19937_64 rng(1);
  const double copy_gbs = bench::copy_bandwidth_gbs(stream);
  std::printf("device copy bandwidth (read+write): %.0f GB/s\n\n", copy_gbs);
  std::printf("decode attention, 32 query heads, head_dim 128, bf16 paged KV (block 16)\n");
  const bool pdl_default = pdl_enabled();
  std::printf("| kv heads | batch | context | K/V bytes | splits | two kernels, no PDL | two kernels | one launch | "
              "GB/s | of copy BW |\n"
              "|---|---|---|---|---|---|---|---|---|---|\n");
  for (const int kv : {4, 8}) {
    for (const int batch : {1, 8, 64}) {
      for (const auto& [ctx, bucket] : std::vector<std::pair<int, int>>{{512, 512}, {640, 1024}, {1024, 1024}, {4096, 4096}, {32768, 32768}}) {
        const double kv_bytes = 2.0 * batch * ctx * kv * kHeadDim * 2;
        Setup s = make_setup(kv, batch, ctx, bucket, 1, copies_for(kv_bytes), rng);
        AttentionTuning two, fused;
        two.launch = DecodeLaunch::two_kernels;
        fused.launch = DecodeLaunch::fused;
        set_pdl_enabled(false);
        const double plain_ms = time_ms(s, stream, two);
        set_pdl_enabled(pdl_default);
        const double two_ms = time_ms(s, stream, two), fused_ms = time_ms(s, stream, fused);
        const double gbs = kv_bytes / (two_ms * 1e-3) / 1e9;
        std::printf("| %d | %d | %d in %d | %.1f MB | %d | %.1f us | %.1f us | %.1f us | %.0f | %.1f%% |\n", kv, batch,
                    ctx, bucket, kv_bytes / 1e6, paged_attention_splits(batch, kv, bucket), plain_ms * 1e3, two_ms * 1e3,
                    fused_ms * 1e3, gbs, 100 * gbs / copy_gbs);
      }
    }
  }
  // Forced split counts against the automatic one (which targets 4 CTAs per SM), at batch 1 and
  // at batch 64 (the decode batch of the end-to-end table, 640 tokens in the 1024 bucket too).
  const std::vector<int> forced = {1, 2, 3, 4, 6, 8, 16, 32, 64, 128};
  std::printf("\nforced split counts: time per call (us)\n| kv heads | batch | context | auto splits |");
  for (const int splits : forced) std::printf(" %d |", splits);
  std::printf("\n|---|---|---|---|");
  for (size_t i = 0; i < forced.size(); ++i) std::printf("---|");
  std::printf("\n");
  for (const auto& [kv, batch, ctx, bucket] : std::vector<std::tuple<int, int, int, int>>{
           {4, 1, 1024, 1024}, {4, 1, 4096, 4096}, {4, 1, 32768, 32768}, {4, 64, 640, 1024}, {4, 64, 4096, 4096},
           {8, 64, 640, 1024}}) {
    Setup s = make_setup(kv, batch, ctx, bucket, 1, copies_for(2.0 * batch * ctx * kv * kHeadDim * 2), rng);
    std::printf("| %d | %d | %d in %d | %d |", kv, batch, ctx, bucket, paged_attention_splits(batch, kv, bucket));
    for (const int splits : forced) std::printf(" %.1f |", time_ms(s, stream, {splits}) * 1e3);
    std::printf("\n");
  }
  // Prefill: causal full prompts (q_len = context), the automatic kernel (prefill here), the
  // per-token kernel forced (the previous path) and the cuBLASLt bf16 GEMM rate of this run.
  const double lt = cublaslt_bf16_tflops(stream);
  std::printf("\nprefill attention, causal, 32 query heads, head_dim 128; FLOPs = 4 · head_dim · heads · Σ visible keys "
              "(QKᵀ and PV, 2 per multiply-add, the causal half: L(L+1)/2 keys per sequence of L)\n"
              "cuBLASLt bf16 GEMM 8192^3 in this run: %.0f TFLOP/s\n"
              "| kv heads | sequences x tokens | kernel | per-token kernel: ms, TFLOP/s | prefill, 64-row tiles: ms, "
              "TFLOP/s | prefill: ms, TFLOP/s | of cuBLASLt bf16 | speedup |\n|---|---|---|---|---|---|---|---|\n",
              lt);
  for (const auto& [kv, seqs, len] : std::vector<std::tuple<int, int, int>>{{4, 4, 2048}, {8, 4, 2048}, {4, 1, 8192}}) {
    Setup p = make_setup(kv, seqs, len, len, len, 1, rng);
    const double flops = 4.0 * seqs * (double(len) * (len + 1) / 2) * kHeads * kHeadDim;
    const AttentionKernel chosen = paged_attention_kernel(int64_t(seqs) * len, seqs, kHeads);
    const double old_ms = prefill_ms(p, stream, {0, AttentionKernel::per_token}), ms = prefill_ms(p, stream);
    const double ms64 = prefill_ms(p, stream, {0, AttentionKernel::prefill, 64});
    const auto tflops = [&](double t) { return flops / (t * 1e-3) / 1e12; };
    std::printf("| %d | %d x %d | %s | %.2f, %.1f | %.3f, %.1f | %.3f, %.1f | %.1f%% | %.1fx |\n", kv, seqs, len,
                chosen == AttentionKernel::prefill ? "prefill" : "per_token", old_ms, tflops(old_ms), ms64, tflops(ms64),
                ms, tflops(ms), 100 * tflops(ms) / lt, old_ms / ms);
  }
  return 0;
}
