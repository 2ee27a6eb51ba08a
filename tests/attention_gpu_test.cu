// Paged attention and the KV-cache write on the GPU vs the CPU reference, on fresh random caches
// with scattered blocks: prefill batches with cached prefixes, decode batches up to 33k tokens
// (split along the keys), every supported head_dim and several GQA groups, both kernels (the
// tensor-core prefill kernel forced on every shape kind, mixed decode + prefill batches), and a
// CUDA-graph capture (no host synchronization inside).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

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

void poison(const Tensor& t) { CUDA_CHECK(cudaMemset(t.data(), 0xFF, t.nbytes())); }  // bf16 NaN

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

// max_seq_len: the host bound the split count is sized by (0: the longest sequence); a CUDA
// graph's context bucket makes it larger, leaving splits with no keys.
void run_case(const Case& c, const AttentionTuning& tuning = {}, int64_t max_seq_len = 0) {
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
  Tensor ws = Tensor::empty(
      {int64_t(paged_attention_workspace_bytes(p.q.size(0), c.n_heads, c.n_kv_heads, c.head_dim, tuning))}, DType::u8,
      Device::cuda);
  poison(out);
  poison(ws);
  const float scale = 1.f / std::sqrt(float(c.head_dim));
  paged_attention(q, k_gpu, v_gpu, batch, scale, ws, out, stream, tuning);
  stream.synchronize();
  EXPECT_EQ(rel_error(k_gpu, p.k_cache), 0.0) << "kv_cache_write K";
  EXPECT_EQ(rel_error(v_gpu, p.v_cache), 0.0) << "kv_cache_write V";
  Tensor ref = Tensor::empty(p.q.shape(), DType::bf16, Device::cpu);
  paged_attention_ref(p.q, p.k_cache, p.v_cache, p.batch, scale, ref);
  const double err = rel_error(out, ref);
  EXPECT_LT(err, 5e-3) << c.n_heads << "/" << c.n_kv_heads << " heads, head_dim " << c.head_dim << ", splits "
                       << tuning.splits << ", kernel " << kernel_name(tuning.kernel) << ", max_seq_len "
                       << batch.max_seq_len;
  std::printf("attention %d/%d heads hd %d bs %d, %lld queries, max len %lld, splits %d, kernel %s: rel error %.2e\n",
              c.n_heads, c.n_kv_heads, c.head_dim, c.block_size, (long long)p.q.size(0), (long long)batch.max_seq_len,
              tuning.splits, kernel_name(tuning.kernel), err);
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
  for (const int splits : {1, 2, 7, 16, 64, 100, 128}) run_case({32, 4, 128, 16, {2000, 37}, {1, 1}}, {splits});
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
  std::mt19937_64 rng(fresh_seed());
  const Case c{32, 4, 128, 16, {3000, 70}, {1, 1}};
  const PagedProblem p = make_paged_problem(rng, c.seq_lens, c.q_lens, c.n_heads, c.n_kv_heads, c.head_dim, c.block_size);
  const Tensor k_gpu = p.k_cache.to(Device::cuda), v_gpu = p.v_cache.to(Device::cuda), q = p.q.to(Device::cuda);
  const AttentionBatch batch = batch_to(p.batch, Device::cuda);
  Tensor out = Tensor::empty(p.q.shape(), DType::bf16, Device::cuda);
  Tensor ws = Tensor::empty({int64_t(paged_attention_workspace_bytes(2, 32, 4, 128))}, DType::u8, Device::cuda);
  poison(out);
  Stream stream;
  cudaGraph_t graph;
  CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  paged_attention(q, k_gpu, v_gpu, batch, 0.088f, ws, out, stream);
  CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec;
  CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  CUDA_CHECK(cudaGraphLaunch(exec, stream));
  stream.synchronize();
  Tensor ref = Tensor::empty(p.q.shape(), DType::bf16, Device::cpu);
  paged_attention_ref(p.q, p.k_cache, p.v_cache, p.batch, 0.088f, ref);
  EXPECT_LT(rel_error(out, ref), 5e-3);
  CUDA_CHECK(cudaGraphExecDestroy(exec));
  CUDA_CHECK(cudaGraphDestroy(graph));
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
