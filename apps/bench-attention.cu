// Decode attention over the paged KV cache with Qwen3-30B-A3B heads (32 query heads, 4 KV heads,
// head_dim 128, block size 16): GB/s of K/V bytes read, as a fraction of the device copy bandwidth
// measured in the same run. Decode is bandwidth-bound, so that fraction is its speed of light.
// Blocks are scattered in random order and the cache is rotated over enough copies to exceed L2;
// calls are timed from CUDA-graph replays (as the decode loop runs them).
// A prefill line (causal, 4 sequences of 2048 tokens) reports TFLOP/s for reference.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>

#include "apps/bench_util.h"
#include "kernels/attention.h"

using namespace mxmoe;

namespace {

constexpr int kHeads = 32, kKvHeads = 4, kHeadDim = 128, kBlock = 16;

struct Setup {
  Tensor k_cache, v_cache, q, out, workspace;
  std::vector<AttentionBatch> batches;  // one per cache copy
};

// `copies` disjoint sets of `batch` sequences of `ctx` cached tokens, `q_len` queries each.
Setup make_setup(int batch, int ctx, int q_len, int copies, std::mt19937_64& rng) {
  const int64_t per_seq = (ctx + kBlock - 1) / kBlock, blocks = per_seq * batch * copies;
  Setup s;
  const Shape shape{blocks, kKvHeads, kBlock, kHeadDim};
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
    s.batches.push_back({table.to(Device::cuda), cu.to(Device::cuda), lens.to(Device::cuda), ctx});
  }
  s.q = Tensor::empty({tokens, kHeads, kHeadDim}, DType::bf16, Device::cuda);
  CUDA_CHECK(cudaMemset(s.q.data(), 0x3E, s.q.nbytes()));
  s.out = Tensor::empty({tokens, kHeads, kHeadDim}, DType::bf16, Device::cuda);
  s.workspace = Tensor::empty({int64_t(paged_attention_workspace_bytes(tokens, kHeads, kKvHeads, kHeadDim))}, DType::u8,
                              Device::cuda);
  return s;
}

// Milliseconds per call, from a CUDA graph of kCalls calls rotating over the cache copies: the
// decode loop replays graphs too, and this keeps host launch latency out of small cases.
double time_ms(Setup& s, cudaStream_t stream) {
  return bench::graph_ms_per_call(stream, 16, [&](int i) {
    paged_attention(s.q, s.k_cache, s.v_cache, s.batches[size_t(i) % s.batches.size()], 1.f / std::sqrt(float(kHeadDim)),
                    s.workspace, s.out, stream);
  });
}

}  // namespace

int main() {
  Stream stream;
  std::mt19937_64 rng(1);
  const double copy_gbs = bench::copy_bandwidth_gbs(stream);
  std::printf("device copy bandwidth (read+write): %.0f GB/s\n\n", copy_gbs);
  std::printf("decode attention, Qwen3-30B-A3B heads (32 q / 4 kv, head_dim 128), bf16 paged KV (block 16)\n");
  std::printf("| batch | context | K/V bytes | time | GB/s | of copy BW | per-token |\n|---|---|---|---|---|---|---|\n");
  for (int batch : {1, 8, 64}) {
    for (int ctx : {512, 4096, 32768}) {
      const double kv_bytes = 2.0 * batch * ctx * kKvHeads * kHeadDim * 2;
      const int copies = int(std::clamp(std::ceil(256e6 / kv_bytes), 1.0, 16.0));  // > 50 MB L2 in rotation
      Setup s = make_setup(batch, ctx, 1, copies, rng);
      const double ms = time_ms(s, stream);
      const double gbs = kv_bytes / (ms * 1e-3) / 1e9;
      std::printf("| %d | %d | %.1f MB | %.1f us | %.0f | %.1f%% | %.2f us |\n", batch, ctx, kv_bytes / 1e6, ms * 1e3, gbs,
                  100 * gbs / copy_gbs, ms * 1e3 / batch);
    }
  }
  const int seqs = 4, len = 2048;
  Setup p = make_setup(seqs, len, len, 1, rng);
  const double ms = time_ms(p, stream);
  const double flops = 4.0 * seqs * (double(len) * (len + 1) / 2) * kHeads * kHeadDim;  // QK and PV over the causal half
  std::printf("\nprefill attention, %d x %d tokens causal: %.2f ms, %.1f TFLOP/s\n", seqs, len, ms, flops / (ms * 1e-3) / 1e12);
  return 0;
}
