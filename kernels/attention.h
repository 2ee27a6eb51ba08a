#pragma once
// Causal attention with GQA over the paged KV cache (engine/kv_cache.h), for prefill and decode
// in one call.
//
// A batch holds S sequences; sequence s contributes q_len(s) = cu_seqlens[s+1] − cu_seqlens[s]
// query tokens (its newest tokens) and has seq_lens[s] tokens in the cache, the new ones
// included (write them with kv_cache_write first). Query j of sequence s sits at position
// p = seq_lens[s] − q_len(s) + j and attends to cached tokens 0..p of its own sequence.
// Decode is the case q_len = 1 for every sequence; a prefill batch mixes lengths freely.
//
//   q:            bf16 [T, n_heads, head_dim]        (T = cu_seqlens[S]; dimension 0 may be strided)
//   k/v_cache:    bf16 [num_blocks, n_kv_heads, block_size, head_dim]
//   block_tables: i32 [S, max_blocks]                (row s: the blocks of sequence s)
//   cu_seqlens:   i32 [S + 1], seq_lens: i32 [S]
//   out:          bf16 [T, n_heads, head_dim]
// n_heads % n_kv_heads == 0 (query head h reads KV head h / (n_heads / n_kv_heads));
// head_dim ∈ {64, 128, 256}; up to 16 query heads per KV head (8 at head_dim 256); block_size a
// power of two. Scores are q·k · scale (usually 1/sqrt(head_dim)) accumulated in fp32 on tensor
// cores; softmax and the value sum are fp32.
//
// Batches with many queries per sequence run a FlashAttention-2-style kernel (tiles of 128 queries,
// 64 at head_dim 256, x 64 keys per query head, no workspace); the others one CTA per (query token, KV head, split).
// Long contexts are split along the keys (flash-decoding): each split keeps a partial softmax
// (max, sum, normalized output) in `workspace` and a second kernel merges them (DecodeLaunch
// below has the one-launch form, measured slower at batch 1). Splits are as
// short as 64 keys when T · n_kv_heads is small (decode of a few sequences), so the grid still
// fills the GPU; at most 128 of them. The split count depends only on T, n_kv_heads and max_seq_len (a host-side bound on seq_lens, e.g. the longest
// sequence of the batch): nothing is read back from the device, so the call can be captured in a
// CUDA graph (capture with the largest max_seq_len it will see; a larger one needs a new graph).
#include <cuda_runtime.h>

#include <cstdint>

#include "engine/tensor.h"

namespace mxmoe {

struct AttentionBatch {
  Tensor block_tables;  // i32 [S, max_blocks]
  Tensor cu_seqlens;    // i32 [S + 1]
  Tensor seq_lens;      // i32 [S]
  int64_t max_seq_len = 0;  // >= every seq_lens[s] (host value; sizes the split along the keys)
};

// The two kernels behind paged_attention. Which one runs depends only on host values (T, S,
// n_heads), so the choice is graph-capturable too.
enum class AttentionKernel : uint8_t {
  automatic,  // paged_attention_kernel's choice
  per_token,  // one CTA per (query token, KV head, key split): decode and short chunks
  prefill,    // one CTA per (64 or 128 queries of a sequence, query head), 64-key tiles on tensor cores
};

// How the per-token kernel runs when a context is split along the keys (bench-attention times them
// side by side). Both launch with programmatic dependent launch (kernels/pdl.cuh; MXMOE_PDL=0 turns
// it off). In the one-launch form the last split CTA to finish for a (query token, KV head)
// merges (in two levels past 8 splits); it finds out through counters per (token, KV head) that
// live on the device (not in the workspace, which need not start zeroed) and are back at zero
// after every call, so such calls on one device must not run concurrently (calls on one stream
// never do; each device has its own counters). On the H100 the merge at the tail of the grid cost
// more than the second launch it saves: batch 1 x 4 KV heads at 512 tokens 9.8 µs vs 8.5 µs in two
// kernels, 12.3 vs 8.5 µs at 640 tokens in a 1024 bucket (bench-attention, same run, both with
// PDL), hence the default.
enum class DecodeLaunch : uint8_t {
  two_kernels,  // the split kernel, then a kernel merging the splits (the default)
  fused,        // one launch that merges the splits
};

// Benchmarks and tests: force the number of key splits (1..128; 0: chosen from T, n_kv_heads and
// max_seq_len as above; the per-token kernel only; more than one split in a fused launch takes at
// most 2048 tokens x KV heads), the kernel, the prefill kernel's query rows per CTA (64, or 128 at
// head_dim <= 128; 0: 128 where allowed), or the per-token kernel's launch form.
struct AttentionTuning {
  int splits = 0;
  AttentionKernel kernel = AttentionKernel::automatic;
  int prefill_rows = 0;
  DecodeLaunch launch = DecodeLaunch::two_kernels;
};

// The kernel paged_attention runs for T = num_tokens queries in S = num_seqs sequences: prefill
// when T >= 16 · S (sequences average 16+ queries) and ceil(T / 64) · n_heads >= the SM count
// (enough query tiles to fill the GPU); per_token otherwise. paged_attention also keeps per_token
// for scale <= 0 (the prefill kernel needs scale > 0; forcing it then is an Error). Either kernel
// is correct for any batch (decode rows in a prefill batch included); this only picks the faster.
// The environment variable MXMOE_ATTENTION_KERNEL=prefill or per_token overrides the choice.
AttentionKernel paged_attention_kernel(int64_t num_tokens, int64_t num_seqs, int n_heads);

// The key split count paged_attention chooses (without a forced one).
int paged_attention_splits(int64_t num_tokens, int n_kv_heads, int64_t max_seq_len);

// Bytes of f32 workspace paged_attention needs for up to `num_tokens` queries (any max_seq_len).
size_t paged_attention_workspace_bytes(int64_t num_tokens, int n_heads, int n_kv_heads, int head_dim,
                                       const AttentionTuning& tuning = {});

void paged_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const AttentionBatch& batch,
                     float scale, const Tensor& workspace, const Tensor& out, cudaStream_t stream,
                     const AttentionTuning& tuning = {});

// Stores new K/V rows: token t of k/v [T, n_kv_heads, head_dim] goes to cache slot slots[t]
// (block · block_size + offset, as KvCache::slots gives); a negative slot skips the token.
void kv_cache_write(const Tensor& k, const Tensor& v, const Tensor& slots, const Tensor& k_cache, const Tensor& v_cache,
                    cudaStream_t stream);

// CPU references: same contracts on CPU tensors, double accumulation (workspace not needed).
void paged_attention_ref(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const AttentionBatch& batch,
                         float scale, const Tensor& out);
void kv_cache_write_ref(const Tensor& k, const Tensor& v, const Tensor& slots, const Tensor& k_cache,
                        const Tensor& v_cache);

namespace detail {
struct AttentionShape {
  int64_t tokens, num_seqs, max_blocks, num_blocks;
  int n_heads, n_kv_heads, head_dim, block_size;
};
AttentionShape check_attention_args(const char* op, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                    const AttentionBatch& batch, const Tensor& out, Device device);
void check_kv_write_args(const char* op, const Tensor& k, const Tensor& v, const Tensor& slots, const Tensor& k_cache,
                         const Tensor& v_cache, Device device);
}  // namespace detail

}  // namespace mxmoe
