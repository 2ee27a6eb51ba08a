// Paged attention and the KV-cache write on the GPU vs the CPU reference, on fresh random caches
// with scattered blocks: prefill batches with cached prefixes, decode batches up to 33k tokens
// (split along the keys), every supported head_dim and several GQA groups, both kernels (the
// tensor-core prefill kernel forced on every shape kind, mixed decode + prefill batches), CUDA-graph
// captures (no host synchronization inside), and the split merge in one launch called again and
// again (its counters go back to zero) in every launch form.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "attention_test_util.h"
#include "engine/error.h"
#include "engine/stream.h"
#include "kernels/attention.h"

using namespace mxmoe;
using namespace mxmoe::testing;

namespace {

struct Case {
  int n_heads, n_kv_heads, head_dim, block_size;
  std::vector<int> seq_lens, q_lens;
};

const char* kernel_name(AttentionKernel k) {
  return k == AttentionKernel::prefill ? "prefill" : k == AttentionKernel::per_token ? "per_token" : "automatic";
}

void poison(const Tensor& t, cudaStream_t stream) {  // bf16 NaN
  CUDA_CHECK(cudaMemsetAsync(t.data(), 0xFF, t.nbytes(), stream));
}

// New K/V rows for every query token, written at the token's slot (CPU and GPU caches).
void write_new_rows(std::mt19937_64& rng, const PagedProblem& p, const Case& c, Tensor& k_gpu, Tensor& v_gpu,
                    cudaStream_t stream) {
  const int64_t tokens = p.q.size(0);
  const Tensor k = random_tensor({tokens, c.n_kv_heads, c.head_dim}, DType::bf16, rng);
  const Tensor v = random_tensor({tokens, c.n_kv_heads, c.head_dim}, DType::bf16, rng);
  Tensor slots = Tensor::empty({tokens}, DType::i32, Device::cpu);
  const int32_t* cu = p.batch.cu_seqlens.data_as<int32_t>();
  for (size_t s = 0; s < c.seq_lens.size(); ++s) {
    for (int j = 0; j < c.q_lens[s]; ++j) {
      const int pos = c.seq_lens[s] - c.q_lens[s] + j;
      const int32_t blk = p.batch.block_tables.data_as<int32_t>()[int64_t(s) * p.batch.block_tables.size(1) + pos / c.block_size];
      slots.data_as<int32_t>()[cu[s] + j] = blk * c.block_size + pos % c.block_size;
    }
  }
  kv_cache_write_ref(k, v, slots, p.k_cache, p.v_cache);
  const Tensor kd = k.to(Device::cuda), vd = v.to(Device::cuda), sd = slots.to(Device::cuda);
  kv_cache_write(kd, vd, sd, k_gpu, v_gpu, stream);
}

const char* launch_name(DecodeLaunch l) { return l == DecodeLaunch::fused ? "fused" : "two_kernels"; }

// Every tuning on one problem, each `calls` times in a row and then `replays` times from a CUDA
// graph of one call, the output poisoned before each (a split merge that did not happen leaves
// NaN): the merging launches find their counters back at zero after every call.
// max_seq_len: the host bound the split count is sized by (0: the longest sequence); a CUDA
// graph's context bucket makes it larger, leaving splits with no keys.
void run_tunings(const Case& c, const std::vector<AttentionTuning>& tunings, int64_t max_seq_len = 0, int calls = 1,
                 int replays = 0) {
  std::mt19937_64 rng(fresh_seed());
  Stream stream;
  PagedProblem p = make_paged_problem(rng, c.seq_lens, c.q_lens, c.n_heads, c.n_kv_heads, c.head_dim, c.block_size);
  Tensor k_gpu = p.k_cache.to(Device::cuda), v_gpu = p.v_cache.to(Device::cuda);
  write_new_rows(rng, p, c, k_gpu, v_gpu, stream);
  AttentionBatch host = p.batch;
  if (max_seq_len > host.max_seq_len) {  // a bucket's block table is as wide as the bucket
    const int64_t seqs = host.block_tables.size(0), used = host.block_tables.size(1);
    const int64_t width = (max_seq_len + c.block_size - 1) / c.block_size;
    host.block_tables = Tensor::empty({seqs, width}, DType::i32, Device::cpu);
    int32_t* table = host.block_tables.data_as<int32_t>();
    std::fill_n(table, seqs * width, 0);
    for (int64_t s = 0; s < seqs; ++s) std::copy_n(p.batch.block_tables.data_as<int32_t>() + s * used, used, table + s * width);
    host.max_seq_len = max_seq_len;
  }
  const AttentionBatch batch = batch_to(host, Device::cuda);
  const Tensor q = p.q.to(Device::cuda);
  Tensor out = Tensor::empty(p.q.shape(), DType::bf16, Device::cuda);
  size_t ws_bytes = 0;
  for (const AttentionTuning& tuning : tunings) {
    ws_bytes = std::max(ws_bytes, paged_attention_workspace_bytes(p.q.size(0), c.n_heads, c.n_kv_heads, c.head_dim, tuning));
  }
  Tensor ws = Tensor::empty({int64_t(ws_bytes)}, DType::u8, Device::cuda);
  poison(ws, stream);
  stream.synchronize();
  EXPECT_EQ(rel_error(k_gpu, p.k_cache), 0.0) << "kv_cache_write K";
  EXPECT_EQ(rel_error(v_gpu, p.v_cache), 0.0) << "kv_cache_write V";
  Tensor ref = Tensor::empty(p.q.shape(), DType::bf16, Device::cpu);
  const float scale = 1.f / std::sqrt(float(c.head_dim));
  paged_attention_ref(p.q, p.k_cache, p.v_cache, p.batch, scale, ref);
  for (const AttentionTuning& tuning : tunings) {
    const auto check = [&](const char* how, int i) {
      stream.synchronize();
      const double err = rel_error(out, ref);
      EXPECT_LT(err, 5e-3) << c.n_heads << "/" << c.n_kv_heads << " heads, head_dim " << c.head_dim << ", "
                           << p.q.size(0) << " queries, splits " << tuning.splits << ", kernel "
                           << kernel_name(tuning.kernel) << ", launch " << launch_name(tuning.launch)
                           << ", max_seq_len " << batch.max_seq_len << ", " << how << " " << i;
      if (i == 0) {
        std::printf("attention %d/%d heads hd %d bs %d, %lld queries, max len %lld, splits %d (chosen %d), kernel %s, "
                    "launch %s, %s: rel error %.2e\n",
                    c.n_heads, c.n_kv_heads, c.head_dim, c.block_size, (long long)p.q.size(0),
                    (long long)batch.max_seq_len, tuning.splits,
                    paged_attention_splits(p.q.size(0), c.n_kv_heads, batch.max_seq_len), kernel_name(tuning.kernel),
                    launch_name(tuning.launch), how, err);
      }
    };
    for (int i = 0; i < calls; ++i) {
      poison(out, stream);
      paged_attention(q, k_gpu, v_gpu, batch, scale, ws, out, stream, tuning);
      check("call", i);
    }
    if (replays == 0) continue;
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    paged_attention(q, k_gpu, v_gpu, batch, scale, ws, out, stream, tuning);
    CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    for (int i = 0; i < replays; ++i) {
      poison(out, stream);
      CUDA_CHECK(cudaGraphLaunch(exec, stream));
      check("replay", i);
    }
    CUDA_CHECK(cudaGraphExecDestroy(exec));
    CUDA_CHECK(cudaGraphDestroy(graph));
  }
}

void run_case(const Case& c, const AttentionTuning& tuning = {}, int64_t max_seq_len = 0) {
  run_tunings(c, {tuning}, max_seq_len);
}

}  // namespace

TEST(AttentionGpu, PrefillBatchWithCachedPrefixes) {
  MXMOE_REQUIRE_GPU();
  run_case({32, 4, 128, 16, {37, 300, 129, 5}, {37, 100, 1, 5}});  // Qwen3-30B-A3B heads
  run_case({14, 2, 64, 32, {70, 513}, {70, 2}});                   // group 7, head_dim 64
  run_case({8, 8, 256, 16, {50, 20}, {50, 3}});                    // no GQA, head_dim 256
  run_case({16, 2, 256, 16, {600}, {3}});                          // group 8 at head_dim 256
  run_case({16, 1, 128, 16, {300, 45}, {1, 45}});                  // group 16
  run_case({32, 4, 128, 4, {100, 9}, {5, 9}});                      // blocks smaller than a warp step
}

// The tensor-core prefill kernel forced (both tile heights), against the same reference and bound: its P·V runs on
// bf16 probabilities (rounding ~2^-9 relative, averaging out over keys) and the output is bf16,
// so ~2e-3 is expected; 5e-3 as for the per-token kernel. Every head_dim, GQA groups 1/4/8 (and
// 16), unequal lengths that are not multiples of the 64-row/64-key tiles, chunks continuing a
// cached prefix (q_len < seq_len), block sizes 4, 16 and 256.
TEST(AttentionGpu, PrefillKernelMatchesReference) {
  MXMOE_REQUIRE_GPU();
  for (const int rows : {0, 64}) {  // tiles of 128 query rows (64 at head_dim 256), and 64
    const AttentionTuning prefill{0, AttentionKernel::prefill, rows};
    run_case({32, 4, 128, 16, {200, 700, 65, 1}, {200, 300, 65, 1}}, prefill);  // group 8, a chunk, a decode row
    run_case({32, 8, 128, 256, {1000, 130}, {128, 129}}, prefill);               // group 4, block 256
    run_case({8, 8, 128, 16, {64, 128, 97}, {64, 64, 33}}, prefill);             // group 1, tile-sized lengths
    run_case({16, 4, 64, 256, {333, 129}, {333, 100}}, prefill);                 // head_dim 64
    run_case({32, 4, 64, 16, {150}, {150}}, prefill);                            // group 8, head_dim 64
    run_case({8, 8, 256, 16, {150, 90}, {150, 37}}, prefill);                    // head_dim 256, group 1
    run_case({16, 2, 256, 256, {300}, {300}}, prefill);                          // group 8, head_dim 256
    run_case({16, 4, 256, 16, {700}, {77}}, prefill);                            // group 4, a chunk after 623
    run_case({16, 1, 128, 16, {300, 45}, {100, 45}}, prefill);                   // group 16
    run_case({32, 4, 128, 4, {100, 9}, {50, 9}}, prefill);                       // blocks smaller than a row of ldmatrix
    run_case({32, 8, 128, 16, {1, 17, 3000}, {1, 1, 1}}, prefill);               // pure decode through it
  }
  std::mt19937_64 rng(fresh_seed());
  const PagedProblem p = make_paged_problem(rng, {300}, {300}, 8, 8, 256, 16, false);
  const Tensor k = p.k_cache.to(Device::cuda), v = p.v_cache.to(Device::cuda), q = p.q.to(Device::cuda);
  Tensor out = Tensor::empty(p.q.shape(), DType::bf16, Device::cuda), ws = Tensor::empty({16}, DType::u8, Device::cuda);
  EXPECT_THROW(paged_attention(q, k, v, batch_to(p.batch, Device::cuda), 0.1f, ws, out, nullptr,
                               {0, AttentionKernel::prefill, 128}),
               Error);  // 128-row tiles need head_dim <= 128
  EXPECT_THROW(paged_attention(q, k, v, batch_to(p.batch, Device::cuda), -0.1f, ws, out, nullptr,
                               {0, AttentionKernel::prefill}),
               Error);  // the prefill kernel needs scale > 0
}

// One sequence decoding beside a 500-token prompt: both kernels forced and the automatic choice
// (the prefill kernel here) agree with the reference.
TEST(AttentionGpu, MixedDecodeAndPrefillBatch) {
  MXMOE_REQUIRE_GPU();
  const Case c{32, 4, 128, 16, {900, 500}, {1, 500}};
  EXPECT_EQ(paged_attention_kernel(501, 2, 32), AttentionKernel::prefill);
  for (const AttentionKernel k : {AttentionKernel::automatic, AttentionKernel::per_token, AttentionKernel::prefill}) {
    run_case(c, {0, k});
  }
  run_case({32, 4, 128, 16, {1500, 40, 2}, {300, 1, 2}}, {0, AttentionKernel::prefill});
}

TEST(AttentionGpu, KernelChoice) {
  MXMOE_REQUIRE_GPU();
  EXPECT_EQ(paged_attention_kernel(4 * 2048, 4, 32), AttentionKernel::prefill);
  EXPECT_EQ(paged_attention_kernel(8192, 1, 4), AttentionKernel::prefill);
  EXPECT_EQ(paged_attention_kernel(64, 64, 32), AttentionKernel::per_token);   // decode
  EXPECT_EQ(paged_attention_kernel(32, 1, 32), AttentionKernel::per_token);    // a short chunk: too few CTAs
  EXPECT_EQ(paged_attention_kernel(600, 64, 32), AttentionKernel::per_token);  // mostly decode rows
}

TEST(AttentionGpu, DecodeLongContextsSplitAlongKeys) {
  MXMOE_REQUIRE_GPU();
  run_case({32, 4, 128, 16, {1, 17, 1000, 5000, 33000}, {1, 1, 1, 1, 1}});
  run_case({32, 8, 128, 32, {40000, 2}, {1, 1}});  // Mixtral heads, block size 32
  run_case({16, 16, 128, 16, {8, 2048, 700}, {1, 1, 1}});  // OLMoE heads
}

TEST(AttentionGpu, DecodeInAContextBucketWithEmptySplits) {
  MXMOE_REQUIRE_GPU();
  // The decode graphs size the split by the bucket (a power of two >= 256), not the lengths.
  run_case({32, 4, 128, 16, {640}, {1}}, {}, 1024);
  run_case({32, 4, 128, 16, {3, 700, 1500, 90}, {1, 1, 1, 1}}, {}, 4096);
  run_case({32, 8, 128, 16, {1}, {1}}, {}, 256);
}

TEST(AttentionGpu, EveryForcedSplitCountMatches) {
  MXMOE_REQUIRE_GPU();
  for (const int splits : {1, 2, 7, 9, 16, 64, 100, 128}) {  // one and two merge levels, partial last runs
    run_tunings({32, 4, 128, 16, {2000, 37}, {1, 1}},
                {{splits}, {splits, AttentionKernel::automatic, 0, DecodeLaunch::fused}});
  }
  run_case({16, 2, 256, 16, {900}, {3}}, {128});  // combine at head_dim 256 (fewer threads than splits)
  run_case({14, 2, 64, 32, {5000}, {1}}, {128});   // and at 64
  std::mt19937_64 rng(fresh_seed());
  const PagedProblem p = make_paged_problem(rng, {10}, {1}, 32, 4, 128, 16, false);
  const Tensor k = p.k_cache.to(Device::cuda), v = p.v_cache.to(Device::cuda), q = p.q.to(Device::cuda);
  Tensor out = Tensor::empty(p.q.shape(), DType::bf16, Device::cuda), ws = Tensor::empty({1 << 20}, DType::u8, Device::cuda);
  EXPECT_THROW(paged_attention(q, k, v, batch_to(p.batch, Device::cuda), 0.1f, ws, out, nullptr, {129}), Error);
}

TEST(AttentionGpu, LongPrefillChunkAgainstLongCache) {
  MXMOE_REQUIRE_GPU();
  run_case({32, 4, 128, 16, {8000}, {32}});  // a 32-token chunk after a 7968-token prefix
}

TEST(AttentionGpu, CapturedInACudaGraph) {
  MXMOE_REQUIRE_GPU();
  run_tunings({32, 4, 128, 16, {3000, 70}, {1, 1}}, {{}, {0, AttentionKernel::automatic, 0, DecodeLaunch::fused}}, 0,
              0, 3);
}

// Decode with many splits per (token, KV head), every launch form against the reference: one and
// three sequences, 4 and 8 KV heads, contexts from 1 key (one split with keys, the rest empty in a
// 4096 bucket) to 33000; three calls in a row and three CUDA graph replays each, so a counter left
// behind by a merge would show as an unwritten (NaN) output in the next call.
TEST(AttentionGpu, DecodeMergesSplitsInOneLaunch) {
  MXMOE_REQUIRE_GPU();
  const std::vector<AttentionTuning> launches = {{0, AttentionKernel::automatic, 0, DecodeLaunch::fused},
                                                 {0, AttentionKernel::automatic, 0, DecodeLaunch::two_kernels}};
  for (const int kv : {4, 8}) {
    for (const int ctx : {1, 65, 512, 4096, 33000}) {
      run_tunings({32, kv, 128, 16, {ctx}, {1}}, launches, 0, 3, 3);
      run_tunings({32, kv, 128, 16, {ctx, ctx / 2 + 1, 17}, {1, 1, 1}}, launches, 0, 3, 3);
    }
    run_tunings({32, kv, 128, 16, {1, 300}, {1, 1}}, launches, 4096, 2, 2);  // empty splits in a bucket
  }
  run_tunings({14, 2, 64, 32, {5000, 77}, {1, 1}}, launches, 0, 2, 2);   // head_dim 64, group 7
  run_tunings({16, 2, 256, 16, {3000}, {1}}, launches, 0, 2, 2);         // head_dim 256, group 8
  run_tunings({16, 1, 128, 16, {9000, 5}, {1, 1}}, launches, 0, 2, 2);   // group 16
  run_tunings({32, 4, 128, 16, {2000, 37}, {1, 1}},
              {{128, AttentionKernel::automatic, 0, DecodeLaunch::fused},
               {128, AttentionKernel::automatic, 0, DecodeLaunch::two_kernels}},
              0, 2, 2);  // the most splits; 37 keys leave most of them empty
  run_tunings({32, 4, 128, 16, {700, 90}, {4, 3}}, launches, 0, 2, 2);  // short chunks: several queries per sequence
}

// A forced split count over more (token, KV head) pairs than the merging launch has counters is
// an Error there and runs in the two-kernel form.
TEST(AttentionGpu, TooManySplitPairsForTheMergingLaunch) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  const PagedProblem p = make_paged_problem(rng, {300}, {300}, 8, 8, 64, 16, false);  // 2400 pairs
  const Tensor k = p.k_cache.to(Device::cuda), v = p.v_cache.to(Device::cuda), q = p.q.to(Device::cuda);
  Tensor out = Tensor::empty(p.q.shape(), DType::bf16, Device::cuda);
  const AttentionTuning fused{2, AttentionKernel::per_token, 0, DecodeLaunch::fused}, two{2, AttentionKernel::per_token};
  Tensor ws = Tensor::empty({int64_t(paged_attention_workspace_bytes(300, 8, 8, 64, fused))}, DType::u8, Device::cuda);
  const AttentionBatch batch = batch_to(p.batch, Device::cuda);
  EXPECT_THROW(paged_attention(q, k, v, batch, 0.1f, ws, out, nullptr, fused), Error);
  paged_attention(q, k, v, batch, 0.1f, ws, out, nullptr, two);
  CUDA_CHECK(cudaDeviceSynchronize());
}

TEST(AttentionGpu, TooSmallWorkspaceIsAClearError) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  const PagedProblem p = make_paged_problem(rng, {30000}, {1}, 32, 4, 128, 16, false);
  const Tensor k_gpu = p.k_cache.to(Device::cuda), v_gpu = p.v_cache.to(Device::cuda), q = p.q.to(Device::cuda);
  Tensor out = Tensor::empty(p.q.shape(), DType::bf16, Device::cuda);
  Tensor ws = Tensor::empty({16}, DType::u8, Device::cuda);
  EXPECT_THROW(paged_attention(q, k_gpu, v_gpu, batch_to(p.batch, Device::cuda), 0.1f, ws, out, nullptr), Error);
}
