#pragma once
// Internal to kernels/attention.cu and kernels/attention_prefill.cu: the launch arguments both
// paged-attention kernels take, the sequence search they share, and the prefill launcher.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mxmoe::attention_detail {

struct Args {
  const __nv_bfloat16* q;
  int64_t q_stride;                      // elements between query tokens
  const __nv_bfloat16* k_cache;
  const __nv_bfloat16* v_cache;
  const int32_t* block_tables;
  int64_t max_blocks;
  const int32_t* cu_seqlens;
  const int32_t* seq_lens;
  int num_seqs;
  __nv_bfloat16* out;
  int64_t out_stride;
  float* part_o;   // per-token kernel, splits > 1: [T, n_heads, num_splits, head_dim]
  float* part_ml;  // [T, n_heads, num_splits, 2]: max (log2 domain) and sum
  int n_heads, n_kv_heads, group, block_shift, split_tokens, num_splits;  // block_size = 1 << block_shift
  float scale_log2;  // scale · log2(e)
};

// The last s in [0, n) with key(s) <= v, for key(s) non-decreasing and key(0) <= v: the sequence a
// token or a query tile belongs to, found from cu_seqlens on the device.
template <class Key>
__device__ __forceinline__ int last_at_most(int n, int v, Key key) {
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (key(mid) <= v) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// The tensor-core prefill kernel (kernels/attention_prefill.cu) for head_dim 64, 128 or 256 over
// `tokens` queries in tiles of `rows` queries (AttentionTuning::prefill_rows); the split fields of
// `a` are unused.
void launch_prefill(const Args& a, int head_dim, int64_t tokens, int rows, cudaStream_t stream);

}  // namespace mxmoe::attention_detail
