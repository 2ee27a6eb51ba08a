// Decode attention over the paged KV cache: Qwen3-30B-A3B heads (32 query / 4 KV, head_dim 128)
// and Mixtral heads (32 / 8), block size 16. GB/s of K/V bytes read, as a fraction of the device
// copy bandwidth measured in the same run (decode is bandwidth-bound at long contexts; at short
// ones and batch 1 it is latency-bound and the time per call is what counts).
// Each shape runs with the key split count the kernel chooses and with the one the previous rule
// chose (splits of >= 128 keys, same kernels), and batch 1 sweeps forced split counts. The decode
// graphs size the split by a power-of-two context bucket, so "640 in 1024" is the bench's
// decode (512 prompt + 256 new tokens) as it runs there.
// Blocks are scattered in random order and the cache is rotated over enough copies to exceed L2;
// calls are timed from CUDA-graph replays (as the decode loop runs them).
// A prefill line (causal, 4 sequences of 2048 tokens) reports TFLOP/s for reference.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>

#include "apps/bench_util.h"
#include "engine/gpu_info.h"
#include "kernels/attention.h"

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
  s.k_cache = Tensor::empty(shape, DType::bf16, Device::cuda);
  s.v_cache = Tensor::empty(shape, DType::bf16, Device::cuda);
  CUDA_CHECK(cudaMemset(s.k_cache.data(), 0x3C, s.k_cache.nbytes()));  // bf16 0x3C3C ≈ 0.0115
  CUDA_CHECK(cudaMemset(s.v_cache.data(), 0x3D, s.v_cache.nbytes()));
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
  s.q = Tensor::empty({tokens, kHeads, kHeadDim}, DType::bf16, Device::cuda);
  CUDA_CHECK(cudaMemset(s.q.data(), 0x3E, s.q.nbytes()));
  s.out = Tensor::empty({tokens, kHeads, kHeadDim}, DType::bf16, Device::cuda);
  const AttentionTuning most{128};  // room for any forced split count
  s.workspace = Tensor::empty(
      {int64_t(paged_attention_workspace_bytes(tokens, kHeads, kv_heads, kHeadDim, most))}, DType::u8, Device::cuda);
  return s;
}

// Milliseconds per call, from a CUDA graph of 16 calls rotating over the cache copies.
double time_ms(Setup& s, cudaStream_t stream, const AttentionTuning& tuning = {}) {
  return bench::graph_ms_per_call(stream, 16, [&](int i) {
    paged_attention(s.q, s.k_cache, s.v_cache, s.batches[size_t(i) % s.batches.size()], 1.f / std::sqrt(float(kHeadDim)),
                    s.workspace, s.out, stream, tuning);
  });
}

// The split count of the previous rule: fill the GPU 4 times over, splits of >= 128 keys; capped
// at the 128 the combine takes now (only batch 1 x 4 KV heads at 32k wanted more: 132).
int previous_splits(int64_t tokens, int kv_heads, int64_t max_seq_len) {
  const int64_t ctas = tokens * kv_heads, want = (4 * int64_t(gpu_info().sm_count) + ctas - 1) / ctas;
  return int(std::clamp<int64_t>(std::min(want, (max_seq_len + 127) / 128), 1, 128));
}

int copies_for(double kv_bytes) { return int(std::clamp(std::ceil(256e6 / kv_bytes), 1.0, 16.0)); }  // > 50 MB L2

}  // namespace

int main() {
  Stream stream;
  std::mt19937_64 rng(1);
  const double copy_gbs = bench::copy_bandwidth_gbs(stream);
  std::printf("device copy bandwidth (read+write): %.0f GB/s\n\n", copy_gbs);
  std::printf("decode attention, 32 query heads, head_dim 128, bf16 paged KV (block 16)\n");
  std::printf("| kv heads | batch | context | K/V bytes | previous splits: time | splits: time | speedup | GB/s | of copy BW |\n"
              "|---|---|---|---|---|---|---|---|---|\n");
  for (const int kv : {4, 8}) {
    for (const int batch : {1, 8, 64}) {
      for (const auto& [ctx, bucket] : std::vector<std::pair<int, int>>{{512, 512}, {640, 1024}, {1024, 1024}, {4096, 4096}, {32768, 32768}}) {
        const double kv_bytes = 2.0 * batch * ctx * kv * kHeadDim * 2;
        Setup s = make_setup(kv, batch, ctx, bucket, 1, copies_for(kv_bytes), rng);
        const int prev = previous_splits(batch, kv, bucket), now = paged_attention_splits(batch, kv, bucket);
        const double prev_ms = time_ms(s, stream, {prev}), ms = time_ms(s, stream);
        const double gbs = kv_bytes / (ms * 1e-3) / 1e9;
        std::printf("| %d | %d | %d in %d | %.1f MB | %d: %.1f us | %d: %.1f us | %.2fx | %.0f | %.1f%% |\n", kv, batch, ctx,
                    bucket, kv_bytes / 1e6, prev, prev_ms * 1e3, now, ms * 1e3, prev_ms / ms, gbs, 100 * gbs / copy_gbs);
      }
    }
  }
  std::printf("\nbatch 1, 4 kv heads, forced split counts: time per call (us)\n| context | 1 | 4 | 8 | 16 | 32 | 64 | 128 |\n"
              "|---|---|---|---|---|---|---|---|\n");
  for (const int ctx : {1024, 4096, 32768}) {
    Setup s = make_setup(4, 1, ctx, ctx, 1, copies_for(2.0 * ctx * 4 * kHeadDim * 2), rng);
    std::printf("| %d |", ctx);
    for (const int splits : {1, 4, 8, 16, 32, 64, 128}) std::printf(" %.1f |", time_ms(s, stream, {splits}) * 1e3);
    std::printf("\n");
  }
  const int seqs = 4, len = 2048;
  Setup p = make_setup(4, seqs, len, len, len, 1, rng);
  const double ms = time_ms(p, stream);
  const double flops = 4.0 * seqs * (double(len) * (len + 1) / 2) * kHeads * kHeadDim;  // QK and PV over the causal half
  std::printf("\nprefill attention, %d x %d tokens causal: %.2f ms, %.1f TFLOP/s\n", seqs, len, ms, flops / (ms * 1e-3) / 1e12);
  return 0;
}
