// Paged causal GQA attention with a split along the keys for decode and short chunks, the
// dispatch to the tensor-core prefill kernel (kernels/attention_prefill.cu) for batches with many
// queries per sequence, and the KV-cache write.
//
// Work split: one CTA per (query token, KV head, key split). It serves all `group` query heads
// that share the KV head, so each K/V row is read once per CTA for all of them. Four warps
// stride over the split's keys, 16 keys per warp step with every K/V load of the step issued
// before any math (decode is bandwidth-bound: ~8 KB in flight per warp). Scores come from tensor
// cores (see attention_kernel), the value sum from CUDA cores. Each warp keeps an online softmax
// (max and sum in the exp2 domain, fp32 accumulators), the CTA merges its four warps through
// shared memory, and a split either writes the output directly (one split) or a partial
// (normalized output, max, sum) to the workspace. attention_combine_kernel merges the partials
// (merge_partials) by default; in the one-launch form (DecodeLaunch::fused) the last split CTA of a
// (token, KV head) to finish merges those of its query heads instead, in two levels past 8
// splits, found with per-device counters. Both launch with PDL (kernels/pdl.cuh): the merge waits
// for its predecessor before reading anything; attention_kernel reads the step's metadata and the
// keys earlier calls wrote before it waits. The prefill kernel and the KV write (off the
// decode path, which writes the cache in qk_norm_rope_kv_write) are plain launches.
#include <cuda_bf16.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <string>

#include "engine/cuda_check.h"
#include "engine/gpu_info.h"
#include "kernels/attention.h"
#include "kernels/attention_prefill.cuh"
#include "kernels/pdl.cuh"
#include "kernels/token_rows.h"
#include "kernels/w8a16_dot.cuh"  // mma_bf16 (the m16n8k16 wrapper the W8A16 kernels use)

namespace mxmoe {

namespace {

using attention_detail::Args;
using attention_detail::last_at_most;

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
// A split of 64 keys is one step of each warp; at decode with few sequences and KV heads the
// splits are that short so the grid spreads over the GPU (1 sequence x 4 KV heads at 1024
// tokens: 64 CTAs), rather than a few CTAs walking long key ranges one dependent step at a time.
constexpr int kMinSplitTokens = 64;
constexpr int kMaxSplits = 128;
// The fused merge runs in two levels so that no CTA reads more than ~16 partials per head: the
// last split of each run of kMergeRun splits merges the run into its first slot, the last run
// merger merges the runs (one level when there is one run).
constexpr int kMergeRun = 8;
constexpr int kMaxRuns = kMaxSplits / kMergeRun;
// (token, KV head) pairs of a fused split call: one set of counters each. The automatic split
// count gives more than one split only below 4 · SM count pairs (paged_attention_splits).
constexpr int kMaxSplitPairs = 2048;
constexpr float kLog2e = 1.4426950408889634f;
// Queries per sequence (on average) from which the prefill kernel's 64-row tiles are used well
// enough (>= 25% of their rows at a single sequence) to beat re-reading K/V once per query.
constexpr int64_t kPrefillMinQueries = 16;

// Merge counters of (token t, KV head h) = pair t · n_kv_heads + h: [pair][0] counts the merged
// runs, [pair][1 + r] the splits of run r that have written their partial. Zero when the module
// loads (one array per device) and put back to zero by the CTA that completes each count, so
// every call (a CUDA graph replay too) starts from zero without a memset. Calls on one stream use
// them one after another (a PDL launch touches them only after its dependency wait); the header
// says that split calls on one device must not run concurrently.
__device__ unsigned split_counters[kMaxSplitPairs][1 + kMaxRuns];

// Whether this CTA is the last of `total` to count on `counter` (then it resets it): the classic
// threadfence reduction. The CTA's global stores before it are visible to the last CTA after it.
__device__ __forceinline__ bool last_to_count(unsigned& counter, int total) {
  __shared__ bool last;
  __syncthreads();  // every store of the CTA is issued (and its shared memory is free again)
  if (threadIdx.x == 0) {
    __threadfence();  // this CTA's stores before its count
    last = atomicAdd(&counter, 1u) == unsigned(total - 1);
    if (last) {
      counter = 0;      // all have counted: ready for the next call
      __threadfence();  // the others' stores are read after their counts
    }
  }
  __syncthreads();
  return last;
}

// Two packed bf16 -> two floats (a bf16 is the top half of an f32).
__device__ __forceinline__ float lo_f32(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float hi_f32(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }

__device__ __forceinline__ uint4 load16(const __nv_bfloat16* p) { return *reinterpret_cast<const uint4*>(p); }

// DPL bf16 (2, 4 or 8) at p as DPL/2 packed words.
template <int DPL>
__device__ __forceinline__ void load_words(const __nv_bfloat16* p, uint32_t (&w)[DPL / 2]) {
  if constexpr (DPL == 2) {
    w[0] = *reinterpret_cast<const uint32_t*>(p);
  } else if constexpr (DPL == 4) {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    w[0] = u.x;
    w[1] = u.y;
  } else {
    const uint4 u = load16(p);
    w[0] = u.x;
    w[1] = u.y;
    w[2] = u.z;
    w[3] = u.w;
  }
}

// Merges `count` partials of (token t, head h0 + g) for g < heads, from split slots first,
// first + stride, ...: o = Σ_i w_i · o_i / Σ_i w_i with w_i = sum_i · 2^(max_i − max); empty
// partials weigh 0. Into out (bf16) if to_out, else into slot `first` as a partial (o, max, sum)
// itself. All threads of the CTA take part (whole warps; heads · HD / 4 <= VPT · blockDim).
// Latency-bound: one warp per head reads the (max, sum) pairs at once; each thread owns VPT float4
// outputs and keeps 16 float4 in flight. Plain loads (no __ldcg: its strong loads are not
// reordered, which leaves ~3 in flight): last_to_count's fence orders them after the writers'.
// weight: shared [heads, count rounded up to 16 / VPT] (zeros past count); mx, sum: shared [heads].
template <int HD, int VPT>
__device__ void merge_partials(const Args& a, int t, int h0, int heads, int first, int stride, int count, bool to_out,
                               float* weight, float* mx, float* sum) {
  constexpr int kPerLane = kMaxSplits / 32, kUnroll = 16 / VPT;
  const int n = a.num_splits, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int padded = (count + kUnroll - 1) / kUnroll * kUnroll;  // weights per head
  for (int g = warp; g < heads; g += blockDim.x / 32) {
    const float2* ml = reinterpret_cast<const float2*>(a.part_ml) + (int64_t(t) * a.n_heads + h0 + g) * n + first;
    float2 v[kPerLane];
    float m = -INFINITY;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int j = lane + 32 * i;
      v[i] = j < count ? ml[int64_t(j) * stride] : make_float2(-INFINITY, 0.f);
      m = fmaxf(m, v[i].x);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    float total = 0.f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int j = lane + 32 * i;
      const float w = v[i].x == -INFINITY ? 0.f : v[i].y * exp2f(v[i].x - m);
      if (j < padded) weight[g * padded + j] = w;
      total += w;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) total += __shfl_xor_sync(0xffffffffu, total, o);
    if (lane == 0) {
      mx[g] = m;
      sum[g] = total;
    }
  }
  __syncthreads();  // the weights; and slot `first` may be overwritten below
  constexpr int kVecs = HD / 4;  // float4 per head
  float4 acc[VPT];
  const float4* part[VPT];
#pragma unroll
  for (int j = 0; j < VPT; ++j) {
    const int vi = min(int(threadIdx.x + j * blockDim.x), heads * kVecs - 1);  // clamped: a few redundant loads
    part[j] = reinterpret_cast<const float4*>(a.part_o) + ((int64_t(t) * a.n_heads + h0 + vi / kVecs) * n + first) * kVecs +
              vi % kVecs;
    acc[j] = make_float4(0.f, 0.f, 0.f, 0.f);
  }
  for (int i0 = 0; i0 < count; i0 += kUnroll) {
    float4 x[VPT][kUnroll];
#pragma unroll
    for (int j = 0; j < VPT; ++j) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        x[j][u] = part[j][int64_t(min(i0 + u, count - 1)) * stride * kVecs];  // weight 0 past count
      }
    }
#pragma unroll
    for (int j = 0; j < VPT; ++j) {
      const int g = min(int(threadIdx.x + j * blockDim.x), heads * kVecs - 1) / kVecs;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const float w = weight[g * padded + i0 + u];
        acc[j].x = fmaf(w, x[j][u].x, acc[j].x);
        acc[j].y = fmaf(w, x[j][u].y, acc[j].y);
        acc[j].z = fmaf(w, x[j][u].z, acc[j].z);
        acc[j].w = fmaf(w, x[j][u].w, acc[j].w);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < VPT; ++j) {
    const int vi = threadIdx.x + j * blockDim.x;
    if (vi >= heads * kVecs) continue;
    const int g = vi / kVecs, d = vi % kVecs * 4;
    const float r = sum[g] > 0.f ? 1.f / sum[g] : 0.f;  // a run of empty splits stays empty
    const float4 o = make_float4(acc[j].x * r, acc[j].y * r, acc[j].z * r, acc[j].w * r);
    if (to_out) {
      __nv_bfloat16* dst = a.out + int64_t(t) * a.out_stride + int64_t(h0 + g) * HD + d;
      reinterpret_cast<__nv_bfloat162*>(dst)[0] = __floats2bfloat162_rn(o.x, o.y);
      reinterpret_cast<__nv_bfloat162*>(dst)[1] = __floats2bfloat162_rn(o.z, o.w);
    } else {
      const int64_t p = (int64_t(t) * a.n_heads + h0 + g) * n + first;
      reinterpret_cast<float4*>(a.part_o + p * HD + d)[0] = o;
      if (d == 0) reinterpret_cast<float2*>(a.part_ml)[p] = make_float2(mx[g], sum[g]);
    }
  }
}

// Scores on tensor cores, values on CUDA cores. Per warp step of kKeys keys:
//   S[GP x kKeys] = Q[GP x HD] · K^T with mma.m16n8k16 (query heads are the M rows, padded to
//   16; keys are N). The head dimension is consumed in a permuted order — quad thread c owns the
//   16-byte chunks at dims 32m + 8c — which a dot product does not care about, so both Q and K
//   fragments come from plain 16-byte loads of whole rows.
//   Online softmax on the S fragments (a row lives in one quad), P to shared memory.
//   O[GP x HD] += P · V on CUDA cores: lane owns dims DPL·lane.., reads each V row coalesced and
//   the probabilities as shared-memory broadcasts.
//   More than one split: the CTA writes its partial; with `merge`, the last split CTA of (t, kvh)
//   then merges them into the output (the classic threadfence reduction).
template <int HD, int GP>
__global__ void __launch_bounds__(kThreads) attention_kernel(Args a, bool merge) {
  constexpr int kKeys = 16;       // keys per warp step: two MMA n-tiles
  constexpr int CH = HD / 32;     // 16-byte chunks of a row per quad thread
  constexpr int DPL = HD / 32;    // output dims per lane
  constexpr int RG = GP / 8;      // 8-row groups of query heads actually used (1 or 2)
  extern __shared__ float smem[];
  float* sm_o = smem;                        // [kWarps][GP][HD]
  float* sm_m = sm_o + kWarps * GP * HD;     // [kWarps][GP]
  float* sm_l = sm_m + kWarps * GP;          // [kWarps][GP]
  float* sm_c = sm_l + kWarps * GP;          // [kWarps][GP]: rescale of the step
  float* sm_p = sm_c + kWarps * GP;          // [kWarps][GP][kKeys]

  const int t = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gid = lane / 4, c = lane % 4;
  const int group = a.group;
  // Before the PDL wait: the step's metadata (uploaded before the step's first kernel) and the
  // first step's keys that earlier calls wrote. Only this call's keys, from seq_lens − q_len on,
  // come from the predecessor (the KV write), so the table lookups and the first DRAM round trip
  // of K/V overlap its tail; q, those keys, the partials and the counters are read after the wait.
  const int seq = last_at_most(a.num_seqs, t, [&](int i) { return a.cu_seqlens[i]; });
  const int q_len = a.cu_seqlens[seq + 1] - a.cu_seqlens[seq];
  const int ctx = a.seq_lens[seq] - q_len + (t - a.cu_seqlens[seq]) + 1;  // keys 0..ctx-1 are visible
  const int begin = split * a.split_tokens, end = min(ctx, begin + a.split_tokens);
  const int32_t* table = a.block_tables + int64_t(seq) * a.max_blocks;
  const int block_mask = (1 << a.block_shift) - 1;
  const int64_t block_stride = int64_t(a.n_kv_heads) * HD << a.block_shift;
  const int64_t head_offset = int64_t(kvh) * HD << a.block_shift;
  const auto row_offset = [&](int key) {
    return int64_t(table[key >> a.block_shift]) * block_stride + head_offset + int64_t(key & block_mask) * HD;
  };

  const int fresh = a.seq_lens[seq] - q_len;  // keys >= fresh: written by the predecessor

  // Steps start at multiples of kKeys (split_tokens is one), so with blocks of >= kKeys tokens a
  // step's keys are consecutive rows of one block: one table lookup per step.
  const bool one_block = a.block_shift >= 4;
  static_assert(kKeys == 16);
  // The loads of the step at key `base`: K rows base + 8j + gid (this thread's chunks) and V rows
  // base..base+15 (this lane's dims), for the keys in [lo, hi); the others are zeros, or (keep)
  // left as they are.
  uint4 kr[2][CH];
  uint32_t vr[kKeys][DPL / 2];
  const auto load_step = [&](int base, int lo, int hi, bool keep) {
    const int64_t base_offset = one_block ? row_offset(base) : 0;
    const auto key_offset = [&](int k) { return one_block ? base_offset + int64_t(k) * HD : row_offset(base + k); };
    const auto wanted = [&](int k) { return base + k >= lo && base + k < hi; };
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int k = 8 * j + gid;
#pragma unroll
      for (int m = 0; m < CH; ++m) {
        if (wanted(k)) kr[j][m] = load16(a.k_cache + key_offset(k) + 32 * m + 8 * c);
        else if (!keep) kr[j][m] = make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int k = 0; k < kKeys; ++k) {
      if (wanted(k)) {
        load_words<DPL>(a.v_cache + key_offset(k) + DPL * lane, vr[k]);
      } else if (!keep) {
#pragma unroll
        for (int i = 0; i < DPL / 2; ++i) vr[k][i] = 0u;
      }
    }
  };
  const int first_base = begin + warp * kKeys;
  if (first_base < end) load_step(first_base, begin, min(end, fresh), false);
  grid_dependency_wait();
  launch_dependents();
  if (first_base < end && fresh < end) load_step(first_base, fresh, end, true);

  // Q as A fragments: qa[m][r] holds the 8 dims 32m + 8c.. of head 8r + gid (zeros past the group).
  uint4 qa[CH][RG];
#pragma unroll
  for (int r = 0; r < RG; ++r) {
    const int head = 8 * r + gid;
#pragma unroll
    for (int m = 0; m < CH; ++m) {
      qa[m][r] = head < group ? load16(a.q + int64_t(t) * a.q_stride + int64_t(kvh * group + head) * HD + 32 * m + 8 * c)
                              : make_uint4(0, 0, 0, 0);
    }
  }
  float m_run[RG], l_run[RG], acc[GP][DPL];
#pragma unroll
  for (int r = 0; r < RG; ++r) {
    m_run[r] = -INFINITY;
    l_run[r] = 0.f;
  }
#pragma unroll
  for (int g = 0; g < GP; ++g) {
#pragma unroll
    for (int e = 0; e < DPL; ++e) acc[g][e] = 0.f;
  }

  for (int base = first_base; base < end; base += kWarps * kKeys) {
    // Every load of the step is issued before any math (the first step's, above).
    if (base != first_base) load_step(base, begin, end, false);
    // S = Q K^T: n-tile j covers keys base + 8j .. +7; k-steps 2m and 2m+1 use words (x, y) and (z, w).
    float s[2][4];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int i = 0; i < 4; ++i) s[j][i] = 0.f;
#pragma unroll
      for (int m = 0; m < CH; ++m) {
        const uint4 q0 = qa[m][0], q1 = RG > 1 ? qa[m][RG - 1] : make_uint4(0, 0, 0, 0), k = kr[j][m];
        w8a16::mma_bf16(s[j], q0.x, q1.x, q0.y, q1.y, k.x, k.y);
        w8a16::mma_bf16(s[j], q0.z, q1.z, q0.w, q1.w, k.z, k.w);
      }
    }
    // Online softmax per head row (rows gid and gid + 8; a row's 16 scores sit in one quad).
#pragma unroll
    for (int r = 0; r < RG; ++r) {
      float x[4];
#pragma unroll
      for (int j = 0; j < 2; ++j) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const int key = base + 8 * j + 2 * c + i;
          x[2 * j + i] = key < end ? s[j][2 * r + i] * a.scale_log2 : -INFINITY;
        }
      }
      float mx = fmaxf(fmaxf(x[0], x[1]), fmaxf(x[2], x[3]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float mn = fmaxf(m_run[r], mx);  // finite: key `base` is visible
      const float corr = exp2f(m_run[r] - mn);
      m_run[r] = mn;
      l_run[r] *= corr;
      float* prow = sm_p + (warp * GP + 8 * r + gid) * kKeys;
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const float p0 = exp2f(x[2 * j] - mn), p1 = exp2f(x[2 * j + 1] - mn);
        l_run[r] += p0 + p1;
        *reinterpret_cast<float2*>(prow + 8 * j + 2 * c) = make_float2(p0, p1);
      }
      if (c == 0) sm_c[warp * GP + 8 * r + gid] = corr;
    }
    __syncwarp();
    // O = O · corr + P V.
#pragma unroll
    for (int g = 0; g < GP; ++g) {
      if (g >= group) continue;
      const float corr = sm_c[warp * GP + g];
#pragma unroll
      for (int e = 0; e < DPL; ++e) acc[g][e] *= corr;
    }
#pragma unroll
    for (int k4 = 0; k4 < kKeys; k4 += 4) {
#pragma unroll
      for (int g = 0; g < GP; ++g) {
        if (g >= group) continue;
        const float4 p = *reinterpret_cast<const float4*>(sm_p + (warp * GP + g) * kKeys + k4);
        const float pk[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
        for (int k = 0; k < 4; ++k) {
#pragma unroll
          for (int i = 0; i < DPL / 2; ++i) {
            acc[g][2 * i] = fmaf(pk[k], lo_f32(vr[k4 + k][i]), acc[g][2 * i]);
            acc[g][2 * i + 1] = fmaf(pk[k], hi_f32(vr[k4 + k][i]), acc[g][2 * i + 1]);
          }
        }
      }
    }
    __syncwarp();  // sm_p and sm_c are rewritten next step
  }

  // Per-warp state to shared memory, then the CTA merges its warps.
#pragma unroll
  for (int r = 0; r < RG; ++r) {
    l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 1);
    l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 2);
    if (c == 0) {
      sm_m[warp * GP + 8 * r + gid] = m_run[r];
      sm_l[warp * GP + 8 * r + gid] = l_run[r];
    }
  }
#pragma unroll
  for (int g = 0; g < GP; ++g) {
    if (g >= group) continue;
#pragma unroll
    for (int e = 0; e < DPL; ++e) sm_o[(warp * GP + g) * HD + DPL * lane + e] = acc[g][e];
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < group * HD; idx += kThreads) {
    const int g = idx / HD, d = idx % HD;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, sm_m[w * GP + g]);
    float sum = 0.f, o = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float mw = sm_m[w * GP + g];
      if (mw == -INFINITY) continue;  // a warp without keys
      const float scale = exp2f(mw - mx);
      sum += sm_l[w * GP + g] * scale;
      o += sm_o[(w * GP + g) * HD + d] * scale;
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
  if (a.num_splits == 1 || !merge) return;
  // The last split of each run merges the run, the last run merger the runs (weights and max/sum
  // in the shared memory of the warps' states, free by then).
  constexpr int VPT = GP * HD / 4 / kThreads;
  unsigned* counters = split_counters[t * a.n_kv_heads + kvh];
  const int run = split / kMergeRun, runs = (a.num_splits + kMergeRun - 1) / kMergeRun, first = run * kMergeRun;
  if (!last_to_count(counters[1 + run], min(kMergeRun, a.num_splits - first))) return;
  if (runs == 1) return merge_partials<HD, VPT>(a, t, kvh * group, group, 0, 1, a.num_splits, true, sm_o, sm_m, sm_l);
  merge_partials<HD, VPT>(a, t, kvh * group, group, first, 1, min(kMergeRun, a.num_splits - first), false, sm_o, sm_m,
                          sm_l);
  if (!last_to_count(counters[0], runs)) return;
  merge_partials<HD, VPT>(a, t, kvh * group, group, 0, kMergeRun, runs, true, sm_o, sm_m, sm_l);
}

// The separate merge (DecodeLaunch::two_kernels): one CTA of HD threads per (token, query head),
// after attention_kernel. (The minimum of 1 CTA per SM lets ptxas keep all 16 loads in flight;
// otherwise it trades them for registers.)
template <int HD>
__global__ void __launch_bounds__(HD, 1) attention_combine_kernel(Args a, bool early_dependents) {
  __shared__ float weight[kMaxSplits], mx[1], sum[1];
  release_dependents_and_wait(early_dependents);  // then the partials
  merge_partials<HD, 1>(a, blockIdx.x, blockIdx.y, 1, 0, 1, a.num_splits, true, weight, mx, sum);
}

int64_t split_target() { return 4 * int64_t(gpu_info().sm_count); }  // CTAs that fill the GPU a few times

template <int HD, int GP>
void launch(const Args& a, int64_t tokens, DecodeLaunch how, cudaStream_t stream) {
  const size_t smem = sizeof(float) * (kWarps * GP * HD + 3 * kWarps * GP + kWarps * GP * 16);
  const dim3 grid(unsigned(tokens), unsigned(a.n_kv_heads), unsigned(a.num_splits));
  const bool two = how == DecodeLaunch::two_kernels;
  launch_pdl(attention_kernel<HD, GP>, grid, kThreads, smem, stream, a, !two);
  if (!two || a.num_splits == 1) return;
  // The merge lets the next kernel (o_proj) start under attention_kernel where that grid leaves
  // every SM room for it (at most one CTA each); with more CTAs the GEMV's blocks would crowd onto
  // the SMs free at the time. Measured on the H100 (bench, 512 + 256 tokens): Qwen3-30B-A3B (40
  // CTAs) 2.982 vs 3.023 ms/step, Mixtral (80) 6.285 vs 6.364; OLMoE (160, always early) 1.109 vs 1.084.
  const bool early = early_dependents_enabled() && int64_t(grid.x) * grid.y * grid.z <= gpu_info().sm_count;
  launch_pdl(attention_combine_kernel<HD>, dim3(unsigned(tokens), unsigned(a.n_heads)), HD, 0, stream, a, early);
}

template <int HD>
void launch_group(const Args& a, int64_t tokens, DecodeLaunch how, cudaStream_t stream) {
  if (a.group <= 8) return launch<HD, 8>(a, tokens, how, stream);
  if constexpr (HD <= 128) {
    if (a.group <= 16) return launch<HD, 16>(a, tokens, how, stream);
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

int paged_attention_splits(int64_t num_tokens, int n_kv_heads, int64_t max_seq_len) {
  const int64_t ctas = std::max<int64_t>(1, num_tokens * n_kv_heads);
  const int64_t want = std::min<int64_t>(kMaxSplits, (split_target() + ctas - 1) / ctas);
  const int64_t cap = std::max<int64_t>(1, (max_seq_len + kMinSplitTokens - 1) / kMinSplitTokens);
  return int(std::max<int64_t>(1, std::min(want, cap)));
}

AttentionKernel paged_attention_kernel(int64_t num_tokens, int64_t num_seqs, int n_heads) {
  // MXMOE_ATTENTION_KERNEL=prefill|per_token: one kernel for every call, to check either end to
  // end (model tests) whatever the batch shapes.
  static const AttentionKernel forced = [] {
    const char* env = std::getenv("MXMOE_ATTENTION_KERNEL");
    const std::string v = env ? env : "";
    MXMOE_CHECK(v.empty() || v == "prefill" || v == "per_token", "MXMOE_ATTENTION_KERNEL=", v,
                ": expected prefill or per_token");
    return v == "prefill" ? AttentionKernel::prefill : v == "per_token" ? AttentionKernel::per_token : AttentionKernel::automatic;
  }();
  if (forced != AttentionKernel::automatic) return forced;
  const bool many_queries = num_tokens >= kPrefillMinQueries * num_seqs;
  const bool fills_gpu = (num_tokens + 63) / 64 * n_heads >= gpu_info().sm_count;
  return many_queries && fills_gpu ? AttentionKernel::prefill : AttentionKernel::per_token;
}

size_t paged_attention_workspace_bytes(int64_t num_tokens, int n_heads, int n_kv_heads, int head_dim,
                                       const AttentionTuning& tuning) {
  MXMOE_CHECK(n_kv_heads > 0, "paged_attention_workspace_bytes: n_kv_heads must be positive");
  // tokens · splits <= tokens + split_target / n_kv_heads (see paged_attention_splits), or the forced count.
  const int64_t rows = std::max(num_tokens + (split_target() + n_kv_heads - 1) / n_kv_heads,
                                num_tokens * tuning.splits);
  return size_t(rows) * size_t(n_heads) * size_t(head_dim + 2) * sizeof(float);
}

void paged_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const AttentionBatch& batch,
                     float scale, const Tensor& workspace, const Tensor& out, cudaStream_t stream,
                     const AttentionTuning& tuning) {
  MXMOE_CHECK(tuning.splits >= 0 && tuning.splits <= kMaxSplits, "paged_attention: forced split count ", tuning.splits,
              " is outside 0..", kMaxSplits);
  const detail::AttentionShape s =
      detail::check_attention_args("paged_attention", q, k_cache, v_cache, batch, out, Device::cuda);
  if (s.tokens == 0) return;
  const TokenRows qr = token_rows(q, "q"), orows = token_rows(out, "out");
  MXMOE_CHECK(reinterpret_cast<uintptr_t>(q.data()) % 16 == 0 && qr.stride % 8 == 0,
              "paged_attention: q rows must be 16-byte aligned");
  MXMOE_CHECK(std::has_single_bit(unsigned(s.block_size)), "paged_attention: block size ", s.block_size,
              " must be a power of two");
  // The prefill kernel takes the softmax max on unscaled scores: it needs scale > 0.
  const bool prefill =
      tuning.kernel == AttentionKernel::automatic
          ? scale > 0.f && paged_attention_kernel(s.tokens, s.num_seqs, s.n_heads) == AttentionKernel::prefill
          : tuning.kernel == AttentionKernel::prefill;
  MXMOE_CHECK(!prefill || scale > 0.f, "paged_attention: the prefill kernel needs a positive scale, got ", scale);
  MXMOE_CHECK(reinterpret_cast<uintptr_t>(out.data()) % 4 == 0 && orows.stride % 2 == 0,
              "paged_attention: out rows must be 4-byte aligned");  // bf16 pairs are stored
  const int splits = prefill ? 1
                     : tuning.splits > 0 ? tuning.splits
                                         : paged_attention_splits(s.tokens, s.n_kv_heads, batch.max_seq_len);
  const int64_t part_rows = s.tokens * s.n_heads * splits;
  MXMOE_CHECK(splits == 1 || (workspace.device() == Device::cuda &&
                              workspace.nbytes() >= size_t(part_rows) * size_t(s.head_dim + 2) * sizeof(float)),
              "paged_attention: workspace of ", workspace.nbytes(), " bytes is too small, need ",
              paged_attention_workspace_bytes(s.tokens, s.n_heads, s.n_kv_heads, s.head_dim, tuning));
  float* part_o = splits > 1 ? static_cast<float*>(workspace.data()) : nullptr;
  Args a{q.data_as<const __nv_bfloat16>(), qr.stride, k_cache.data_as<const __nv_bfloat16>(),
         v_cache.data_as<const __nv_bfloat16>(), batch.block_tables.data_as<const int32_t>(), s.max_blocks,
         batch.cu_seqlens.data_as<const int32_t>(), batch.seq_lens.data_as<const int32_t>(), int(s.num_seqs),
         out.data_as<__nv_bfloat16>(), orows.stride, part_o, part_o ? part_o + part_rows * s.head_dim : nullptr,
         s.n_heads, s.n_kv_heads, s.n_heads / s.n_kv_heads, std::countr_zero(unsigned(s.block_size)),
         int((batch.max_seq_len + splits - 1) / splits + 15) / 16 * 16, splits, scale * kLog2e};
  if (prefill) return attention_detail::launch_prefill(a, s.head_dim, s.tokens, tuning.prefill_rows, stream);
  MXMOE_CHECK(splits == 1 || tuning.launch == DecodeLaunch::two_kernels || s.tokens * s.n_kv_heads <= kMaxSplitPairs,
              "paged_attention: ", splits, " splits for ", s.tokens, " tokens x ", s.n_kv_heads,
              " KV heads: the merging launch takes at most ", kMaxSplitPairs, " (token, KV head) pairs");
  switch (s.head_dim) {
    case 64: return launch_group<64>(a, s.tokens, tuning.launch, stream);
    case 128: return launch_group<128>(a, s.tokens, tuning.launch, stream);
    case 256: return launch_group<256>(a, s.tokens, tuning.launch, stream);
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
