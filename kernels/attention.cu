// Paged causal GQA attention (prefill and decode in one kernel) with a split along the keys, and
// the KV-cache write.
//
// Work split: one CTA per (query token, KV head, key split). It serves all `group` query heads
// that share the KV head, so each K/V row is read once per CTA for all of them. Four warps
// stride over the split's keys; a half-warp owns one key row (16 lanes × head_dim/16 elements,
// 16-byte loads for head_dim 128), so a warp step covers kUnroll pairs of keys, all loads issued
// before any math so several KB per SM are in flight (decode is bandwidth-bound). Each warp keeps
// an online softmax (max and sum in the exp2 domain, fp32 accumulators), the CTA merges its four
// warps through shared memory, and a split either writes the output directly (one split) or a
// partial (normalized output, max, sum) that attention_combine_kernel merges.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>

#include "engine/cuda_check.h"
#include "engine/gpu_info.h"
#include "kernels/attention.h"
#include "kernels/token_rows.h"

namespace mxmoe {

namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kMinSplitTokens = 128;    // shorter splits cost more in merging than they gain
constexpr float kLog2e = 1.4426950408889634f;

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
  float* part_o;   // [T, n_heads, num_splits, head_dim]
  float* part_ml;  // [T, n_heads, num_splits, 2]: max (log2 domain) and sum
  int n_heads, n_kv_heads, group, block_size, split_tokens, num_splits;
  float scale_log2;  // scale · log2(e)
};

// N bf16 (N = 4, 8 or 16) from an address aligned to min(2·N, 16) bytes.
template <int N>
__device__ __forceinline__ void load_raw(const __nv_bfloat16* p, uint32_t (&r)[N / 2]) {
  if constexpr (N == 4) {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    r[0] = u.x;
    r[1] = u.y;
  } else {
#pragma unroll
    for (int i = 0; i < N / 8; ++i) {
      const uint4 u = reinterpret_cast<const uint4*>(p)[i];
      r[4 * i] = u.x;
      r[4 * i + 1] = u.y;
      r[4 * i + 2] = u.z;
      r[4 * i + 3] = u.w;
    }
  }
}

// Two packed bf16 -> two floats (a bf16 is the top half of an f32).
__device__ __forceinline__ float lo_f32(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float hi_f32(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }

// The sequence that query token t belongs to: the last s with cu_seqlens[s] <= t.
__device__ __forceinline__ int find_sequence(const int32_t* cu, int num_seqs, int t) {
  int lo = 0, hi = num_seqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (cu[mid] <= t) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

template <int HD, int GMAX>
__global__ void __launch_bounds__(kThreads) attention_kernel(Args a) {
  constexpr int N = HD / 16;  // elements per lane
  // Key pairs in flight per warp step: 4 while the accumulators leave room (GMAX·HD <= 1024
  // keeps ~225 registers, two CTAs per SM), else 2.
  constexpr int kUnroll = GMAX * HD <= 1024 ? 4 : 2;
  constexpr int kTile = 2 * kUnroll;  // keys per warp step
  extern __shared__ float smem[];
  float* sm_o = smem;                           // [kWarps][GMAX][HD]
  float* sm_m = sm_o + kWarps * GMAX * HD;      // [kWarps][GMAX]
  float* sm_l = sm_m + kWarps * GMAX;           // [kWarps][GMAX]

  const int t = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, half = lane / 16, hl = lane % 16;
  const int group = a.group;
  const int seq = find_sequence(a.cu_seqlens, a.num_seqs, t);
  const int q_len = a.cu_seqlens[seq + 1] - a.cu_seqlens[seq];
  const int ctx = a.seq_lens[seq] - q_len + (t - a.cu_seqlens[seq]) + 1;  // keys 0..ctx-1 are visible
  const int begin = split * a.split_tokens, end = min(ctx, begin + a.split_tokens);
  const int32_t* table = a.block_tables + int64_t(seq) * a.max_blocks;

  uint32_t q[GMAX][N / 2];
#pragma unroll
  for (int g = 0; g < GMAX; ++g) {
    if (g < group) load_raw<N>(a.q + int64_t(t) * a.q_stride + int64_t(kvh * group + g) * HD + hl * N, q[g]);
  }
  float m[GMAX], l[GMAX], acc[GMAX][N];
#pragma unroll
  for (int g = 0; g < GMAX; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.f;
#pragma unroll
    for (int i = 0; i < N; ++i) acc[g][i] = 0.f;
  }

  const int64_t head_offset = int64_t(kvh) * a.block_size * HD + hl * N;
  const int64_t block_stride = int64_t(a.n_kv_heads) * a.block_size * HD;
  for (int base = begin + warp * kTile; base < end; base += kWarps * kTile) {
    uint32_t kr[kUnroll][N / 2], vr[kUnroll][N / 2];
    bool valid[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int key = base + 2 * u + half;
      valid[u] = key < end;
      if (valid[u]) {
        const int64_t off = int64_t(table[key / a.block_size]) * block_stride + head_offset + int64_t(key % a.block_size) * HD;
        load_raw<N>(a.k_cache + off, kr[u]);
        load_raw<N>(a.v_cache + off, vr[u]);
      } else {
#pragma unroll
        for (int i = 0; i < N / 2; ++i) kr[u][i] = vr[u][i] = 0u;
      }
    }
    float s[kUnroll][GMAX];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int g = 0; g < GMAX; ++g) {
        if (g >= group) continue;
        float d = 0.f;
#pragma unroll
        for (int i = 0; i < N / 2; ++i) {
          d = fmaf(lo_f32(q[g][i]), lo_f32(kr[u][i]), d);
          d = fmaf(hi_f32(q[g][i]), hi_f32(kr[u][i]), d);
        }
#pragma unroll
        for (int o = 8; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);  // within the half-warp
        s[u][g] = valid[u] ? d * a.scale_log2 : -INFINITY;
      }
    }
#pragma unroll
    for (int g = 0; g < GMAX; ++g) {
      if (g >= group) continue;
      float tile_max = s[0][g];
#pragma unroll
      for (int u = 1; u < kUnroll; ++u) tile_max = fmaxf(tile_max, s[u][g]);
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 16));
      const float mn = fmaxf(m[g], tile_max);  // finite: key `base` of half 0 is always valid
      const float corr = exp2f(m[g] - mn);
      l[g] *= corr;
#pragma unroll
      for (int i = 0; i < N; ++i) acc[g][i] *= corr;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const float p = exp2f(s[u][g] - mn);
        l[g] += p;
#pragma unroll
        for (int i = 0; i < N / 2; ++i) {
          acc[g][2 * i] = fmaf(p, lo_f32(vr[u][i]), acc[g][2 * i]);
          acc[g][2 * i + 1] = fmaf(p, hi_f32(vr[u][i]), acc[g][2 * i + 1]);
        }
      }
      m[g] = mn;
    }
  }

  // Merge the two half-warps (same running max), then the warps through shared memory.
#pragma unroll
  for (int g = 0; g < GMAX; ++g) {
    if (g >= group) continue;
    l[g] += __shfl_xor_sync(0xffffffffu, l[g], 16);
#pragma unroll
    for (int i = 0; i < N; ++i) acc[g][i] += __shfl_xor_sync(0xffffffffu, acc[g][i], 16);
    if (half == 0) {
#pragma unroll
      for (int i = 0; i < N; ++i) sm_o[(warp * GMAX + g) * HD + hl * N + i] = acc[g][i];
    }
    if (lane == 0) {
      sm_m[warp * GMAX + g] = m[g];
      sm_l[warp * GMAX + g] = l[g];
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < group * HD; idx += kThreads) {
    const int g = idx / HD, d = idx % HD;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, sm_m[w * GMAX + g]);
    float sum = 0.f, o = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float mw = sm_m[w * GMAX + g];
      if (mw == -INFINITY) continue;  // a warp without keys
      const float scale = exp2f(mw - mx);
      sum += sm_l[w * GMAX + g] * scale;
      o += sm_o[(w * GMAX + g) * HD + d] * scale;
    }
    const int h = kvh * group + g;
    if (a.num_splits == 1) {
      a.out[int64_t(t) * a.out_stride + int64_t(h) * HD + d] = __float2bfloat16(o / sum);
    } else {
      const int64_t p = (int64_t(t) * a.n_heads + h) * a.num_splits + split;
      a.part_o[p * HD + d] = sum > 0.f ? o / sum : 0.f;
      if (d == 0) {
        a.part_ml[2 * p] = mx;
        a.part_ml[2 * p + 1] = sum;
      }
    }
  }
}

// out[t, h] = Σ_s w_s · o_s / Σ_s w_s with w_s = sum_s · 2^(max_s − max); empty splits weigh 0.
template <int HD>
__global__ void __launch_bounds__(HD) attention_combine_kernel(Args a) {
  const int t = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
  const int64_t p0 = (int64_t(t) * a.n_heads + h) * a.num_splits;
  float mx = -INFINITY;
  for (int s = 0; s < a.num_splits; ++s) mx = fmaxf(mx, a.part_ml[2 * (p0 + s)]);
  float sum = 0.f, o = 0.f;
  for (int s = 0; s < a.num_splits; ++s) {
    const float ms = a.part_ml[2 * (p0 + s)];
    if (ms == -INFINITY) continue;
    const float w = a.part_ml[2 * (p0 + s) + 1] * exp2f(ms - mx);
    sum += w;
    o += w * a.part_o[(p0 + s) * HD + d];
  }
  a.out[int64_t(t) * a.out_stride + int64_t(h) * HD + d] = __float2bfloat16(o / sum);
}

int64_t split_target() { return 4 * int64_t(gpu_info().sm_count); }  // CTAs that fill the GPU a few times

int num_splits(int64_t tokens, int n_kv_heads, int64_t max_seq_len) {
  const int64_t ctas = std::max<int64_t>(1, tokens * n_kv_heads);
  const int64_t want = (split_target() + ctas - 1) / ctas;
  const int64_t cap = std::max<int64_t>(1, (max_seq_len + kMinSplitTokens - 1) / kMinSplitTokens);
  return int(std::max<int64_t>(1, std::min(want, cap)));
}

template <int HD, int GMAX>
void launch(const Args& a, int64_t tokens, cudaStream_t stream) {
  const size_t smem = sizeof(float) * (kWarps * GMAX * HD + 2 * kWarps * GMAX);
  const dim3 grid(unsigned(tokens), unsigned(a.n_kv_heads), unsigned(a.num_splits));
  attention_kernel<HD, GMAX><<<grid, kThreads, smem, stream>>>(a);
  CUDA_CHECK_LAUNCH();
  if (a.num_splits > 1) {
    attention_combine_kernel<HD><<<dim3(unsigned(tokens), unsigned(a.n_heads)), HD, 0, stream>>>(a);
    CUDA_CHECK_LAUNCH();
  }
}

template <int HD>
void launch_group(const Args& a, int64_t tokens, cudaStream_t stream) {
  if (a.group <= 1) return launch<HD, 1>(a, tokens, stream);
  if (a.group <= 2) return launch<HD, 2>(a, tokens, stream);
  if (a.group <= 4) return launch<HD, 4>(a, tokens, stream);
  if (a.group <= 8) return launch<HD, 8>(a, tokens, stream);
  if constexpr (HD <= 128) {
    if (a.group <= 16) return launch<HD, 16>(a, tokens, stream);
  }
  fail("paged_attention: ", a.group, " query heads per KV head with head_dim ", HD, " are not supported (at most ",
       HD <= 128 ? 16 : 8, ")");
}

__global__ void kv_write_kernel(const __nv_bfloat16* k, const __nv_bfloat16* v, int64_t k_stride, int64_t v_stride,
                                const int32_t* slots, __nv_bfloat16* k_cache, __nv_bfloat16* v_cache, int64_t tokens,
                                int heads, int block_size, int hd) {
  const int chunks = hd / 8;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= tokens * heads * chunks) return;
  const int c = int(idx % chunks), h = int((idx / chunks) % heads);
  const int64_t t = idx / (int64_t(chunks) * heads);
  const int64_t slot = slots[t];
  if (slot < 0) return;
  const int64_t dst = ((slot / block_size * heads + h) * block_size + slot % block_size) * hd + c * 8;
  reinterpret_cast<uint4*>(k_cache + dst)[0] = reinterpret_cast<const uint4*>(k + t * k_stride + int64_t(h) * hd + c * 8)[0];
  reinterpret_cast<uint4*>(v_cache + dst)[0] = reinterpret_cast<const uint4*>(v + t * v_stride + int64_t(h) * hd + c * 8)[0];
}

}  // namespace

size_t paged_attention_workspace_bytes(int64_t num_tokens, int n_heads, int n_kv_heads, int head_dim) {
  MXMOE_CHECK(n_kv_heads > 0, "paged_attention_workspace_bytes: n_kv_heads must be positive");
  // tokens · splits <= tokens + split_target / n_kv_heads (see num_splits).
  const int64_t rows = num_tokens + (split_target() + n_kv_heads - 1) / n_kv_heads;
  return size_t(rows) * size_t(n_heads) * size_t(head_dim + 2) * sizeof(float);
}

void paged_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const AttentionBatch& batch,
                     float scale, const Tensor& workspace, const Tensor& out, cudaStream_t stream) {
  const detail::AttentionShape s =
      detail::check_attention_args("paged_attention", q, k_cache, v_cache, batch, out, Device::cuda);
  if (s.tokens == 0) return;
  const TokenRows qr = token_rows(q, "q"), orows = token_rows(out, "out");
  const int n = s.head_dim / 16;
  MXMOE_CHECK(reinterpret_cast<uintptr_t>(q.data()) % std::min(2 * n, 16) == 0 && qr.stride % n == 0,
              "paged_attention: q rows must be aligned to ", std::min(2 * n, 16), " bytes");
  const int splits = num_splits(s.tokens, s.n_kv_heads, batch.max_seq_len);
  const int64_t part_rows = s.tokens * s.n_heads * splits;
  MXMOE_CHECK(splits == 1 || (workspace.device() == Device::cuda &&
                              workspace.nbytes() >= size_t(part_rows) * size_t(s.head_dim + 2) * sizeof(float)),
              "paged_attention: workspace of ", workspace.nbytes(), " bytes is too small, need ",
              paged_attention_workspace_bytes(s.tokens, s.n_heads, s.n_kv_heads, s.head_dim));
  float* part_o = splits > 1 ? static_cast<float*>(workspace.data()) : nullptr;
  Args a{q.data_as<const __nv_bfloat16>(), qr.stride, k_cache.data_as<const __nv_bfloat16>(),
         v_cache.data_as<const __nv_bfloat16>(), batch.block_tables.data_as<const int32_t>(), s.max_blocks,
         batch.cu_seqlens.data_as<const int32_t>(), batch.seq_lens.data_as<const int32_t>(), int(s.num_seqs),
         out.data_as<__nv_bfloat16>(), orows.stride, part_o, part_o ? part_o + part_rows * s.head_dim : nullptr,
         s.n_heads, s.n_kv_heads, s.n_heads / s.n_kv_heads, s.block_size,
         int((batch.max_seq_len + splits - 1) / splits), splits, scale * kLog2e};
  switch (s.head_dim) {
    case 64: return launch_group<64>(a, s.tokens, stream);
    case 128: return launch_group<128>(a, s.tokens, stream);
    case 256: return launch_group<256>(a, s.tokens, stream);
  }
}

void kv_cache_write(const Tensor& k, const Tensor& v, const Tensor& slots, const Tensor& k_cache, const Tensor& v_cache,
                    cudaStream_t stream) {
  detail::check_kv_write_args("kv_cache_write", k, v, slots, k_cache, v_cache, Device::cuda);
  const TokenRows kr = token_rows(k, "k"), vr = token_rows(v, "v");
  const int heads = int(k_cache.size(1)), bs = int(k_cache.size(2)), hd = int(k_cache.size(3));
  MXMOE_CHECK(hd % 8 == 0 && kr.stride % 8 == 0 && vr.stride % 8 == 0 && reinterpret_cast<uintptr_t>(k.data()) % 16 == 0 &&
                  reinterpret_cast<uintptr_t>(v.data()) % 16 == 0,
              "kv_cache_write: k and v rows must be 16-byte aligned");
  const int64_t work = kr.tokens * heads * (hd / 8);
  if (work == 0) return;
  constexpr int kWriteThreads = 256;
  kv_write_kernel<<<unsigned((work + kWriteThreads - 1) / kWriteThreads), kWriteThreads, 0, stream>>>(
      k.data_as<const __nv_bfloat16>(), v.data_as<const __nv_bfloat16>(), kr.stride, vr.stride,
      slots.data_as<const int32_t>(), k_cache.data_as<__nv_bfloat16>(), v_cache.data_as<__nv_bfloat16>(), kr.tokens,
      heads, bs, hd);
  CUDA_CHECK_LAUNCH();
}

}  // namespace mxmoe
