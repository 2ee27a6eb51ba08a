// MoE permutation and data movement kernels (see moe_permute.h).
//
// The permutation is a stable counting sort of the T*k pairs by expert in three launches over
// 256-pair chunks: count (shared-memory histogram per chunk) -> scan (one block: per-chunk bases
// per expert, expert offsets, active list) -> place (one warp per chunk walks it in order, ranking
// equal experts with __match_any_sync, so pairs stay ascending within an expert).
#include <cub/block/block_scan.cuh>
#include <cuda_bf16.h>

#include <algorithm>
#include <utility>

#include "engine/cuda_check.h"
#include "engine/gpu_info.h"
#include "kernels/moe_permute.h"
#include "kernels/moe_routing.h"
#include "kernels/moe_routing.cuh"
#include "kernels/pdl.cuh"
#include "kernels/rmsnorm.h"
#include "kernels/rmsnorm_row.cuh"
#include "kernels/silu.cuh"

namespace mxmoe {

namespace {

constexpr int kChunk = 256;         // pairs per chunk
constexpr int kScanThreads = kMoeMaxExperts;  // one thread per expert
constexpr int kThreads = 256;

int grid_for(int64_t threads) { return grid_stride_blocks(threads, kThreads, 16); }

// chunk_counts[c, e] = pairs of chunk c routed to expert e.
__global__ void __launch_bounds__(kChunk) count_kernel(const int32_t* __restrict__ ids, int64_t n_pairs,
                                                       int n_experts, int32_t* __restrict__ chunk_counts) {
  extern __shared__ int32_t hist[];  // [E]
  for (int e = threadIdx.x; e < n_experts; e += kChunk) hist[e] = 0;
  __syncthreads();
  const int64_t p = int64_t(blockIdx.x) * kChunk + threadIdx.x;
  if (p < n_pairs) atomicAdd(&hist[ids[p]], 1);
  __syncthreads();
  for (int e = threadIdx.x; e < n_experts; e += kChunk) chunk_counts[int64_t(blockIdx.x) * n_experts + e] = hist[e];
}

using Scan = cub::BlockScan<int32_t, kScanThreads>;

// Called by all kScanThreads threads, thread e = expert e with `total` = its pair count (0 past E):
// writes expert_offsets, active_experts (unused tail = -1) and num_active; returns e's offset.
__device__ int32_t scan_experts(Scan::TempStorage& storage, int32_t total, int n_experts, int32_t* __restrict__ offsets,
                                int32_t* __restrict__ active, int32_t* __restrict__ num_active) {
  const int e = threadIdx.x;
  int32_t offset, n_pairs;
  Scan(storage).ExclusiveSum(total, offset, n_pairs);
  __syncthreads();
  int32_t rank, n_active;
  Scan(storage).ExclusiveSum(total > 0 ? 1 : 0, rank, n_active);
  if (e < n_experts) {
    offsets[e] = offset;
    if (total > 0) active[rank] = e;
    else active[n_active + (e - rank)] = -1;  // e - rank = inactive experts before e
  }
  if (e == 0) {
    offsets[n_experts] = n_pairs;
    *num_active = n_active;
  }
  return offset;
}

// One block: turns chunk_counts into each chunk's first sorted position per expert, plus the
// permutation's offsets and active list.
__global__ void __launch_bounds__(kScanThreads)
    scan_kernel(int32_t* __restrict__ chunk_counts, int64_t chunks, int n_experts, int32_t* __restrict__ offsets,
                int32_t* __restrict__ active, int32_t* __restrict__ num_active) {
  __shared__ Scan::TempStorage storage;
  const int e = threadIdx.x;
  int32_t total = 0;  // pairs of expert e
  if (e < n_experts)
    for (int64_t c = 0; c < chunks; ++c) {
      const int32_t v = chunk_counts[c * n_experts + e];
      chunk_counts[c * n_experts + e] = total;
      total += v;
    }
  const int32_t offset = scan_experts(storage, total, n_experts, offsets, active, num_active);
  if (e < n_experts)
    for (int64_t c = 0; c < chunks; ++c) chunk_counts[c * n_experts + e] += offset;
}

// One warp places pairs [first, min(first + 32·steps, n_pairs)) in order: next[e] is the next free
// sorted position of expert e (shared memory, advanced here); equal experts within a step are
// ranked by lane with __match_any_sync, so pairs stay ascending within an expert.
// (ids: global memory, or the fused kernel's shared copy.)
__device__ void place_pairs(const int32_t* ids, int64_t first, int64_t steps, int64_t n_pairs,
                            int32_t* next, int32_t* __restrict__ sorted_pairs, int32_t* __restrict__ pair_rows) {
  const int lane = threadIdx.x & 31;
  const uint32_t lanes_below = (1u << lane) - 1;
  for (int64_t step = 0; step < steps; ++step) {
    const int64_t p = first + step * 32 + lane;
    const int e = p < n_pairs ? ids[p] : -1;
    const uint32_t same = __match_any_sync(0xffffffffu, e);
    if (e >= 0) {
      const int32_t pos = next[e] + __popc(same & lanes_below);
      sorted_pairs[pos] = int32_t(p);
      pair_rows[p] = pos;
    }
    __syncwarp();
    if (e >= 0 && (same & lanes_below) == 0) next[e] += __popc(same);
    __syncwarp();
  }
}

// One warp per chunk: stable placement of its pairs from the chunk's bases.
__global__ void __launch_bounds__(32) place_kernel(const int32_t* __restrict__ ids, int64_t n_pairs, int n_experts,
                                                   const int32_t* __restrict__ chunk_bases,
                                                   int32_t* __restrict__ sorted_pairs, int32_t* __restrict__ pair_rows) {
  extern __shared__ int32_t next[];  // [E]
  for (int e = threadIdx.x; e < n_experts; e += 32) next[e] = chunk_bases[int64_t(blockIdx.x) * n_experts + e];
  __syncwarp();
  place_pairs(ids, int64_t(blockIdx.x) * kChunk, kChunk / 32, n_pairs, next, sorted_pairs, pair_rows);
}

// Small batches (T·k <= kMoeFusedRoutePairs) in one launch instead of four: the block routes the
// tokens into shared memory, then counts and scans, and warp 0 places every pair.
// Routing: for small T·E one thread per (token, expert) ranks it against the token's logits
// (staged in shared memory): the whole top-k in one pass of E steps per thread; beyond, one warp
// per token takes top_k arg-max rounds (route_token). The ranking's work grows as T·E², so it pays
// only up to kRankWork. Measured on H100 (bench-moe, routing + permutation alone, two runs):
// E=128 k=8 T=1 5.3 us ranked vs 6.1 us in rounds, T=8 11.9 vs 7.0 us; E=8 k=2 T=1 and 8
// 3.3-3.4 vs 3.8-3.9 us.
// Launched with programmatic dependent launch (kernels/pdl.cuh): the launch overlaps the
// previous kernel (which computes the logits), nothing is read or written before the wait, and the
// next kernel (the experts' gate/up, which waits for this one to finish) may launch at once.
constexpr int kRankLogits = kScanThreads;  // one (token, expert) per thread
constexpr int64_t kRankWork = 128 * 128;   // T·E² up to E=128 at T=1
constexpr int kStagedLogits = 4096;        // [T, E] logits copied to shared memory when they fit

// The routing + permutation of both fused kernels, by one whole block of kScanThreads threads once
// the logits [T, E] are final. They are read through L2 (__ldcg): in the router kernel other blocks
// wrote them.
__device__ void route_permute_block(const float* __restrict__ logits, int n_tokens, int n_experts, int top_k,
                                    bool renormalize, int32_t* __restrict__ ids, float* __restrict__ weights,
                                    int32_t* __restrict__ offsets, int32_t* __restrict__ sorted_pairs,
                                    int32_t* __restrict__ active, int32_t* __restrict__ num_active,
                                    int32_t* __restrict__ pair_rows) {
  __shared__ Scan::TempStorage storage;
  __shared__ int32_t next[kScanThreads];          // per expert: pair count, then next free sorted position
  __shared__ int32_t s_ids[kMoeFusedRoutePairs];  // [T·k]
  __shared__ float s_logits[kStagedLogits];       // [T, E] when they fit
  next[threadIdx.x] = 0;
  const int n_pairs = n_tokens * top_k, n_logits = n_tokens * n_experts, warp = threadIdx.x / 32;
  const bool staged = n_logits <= kStagedLogits;
  if (staged)
    for (int i = threadIdx.x; i < n_logits; i += kScanThreads) s_logits[i] = __ldcg(logits + i);
  __syncthreads();
  if (n_logits <= kRankLogits && int64_t(n_tokens) * n_experts * n_experts <= kRankWork) {
    const int i = threadIdx.x, t = i / n_experts, e = i % n_experts;
    if (t < n_tokens) {
      const int rank = moe_detail::rank_of(s_logits + t * n_experts, n_experts, e);
      if (rank < top_k) s_ids[t * top_k + rank] = e;
    }
    __syncthreads();
    for (int tt = warp; tt < n_tokens; tt += kScanThreads / 32) {
      const float* l = s_logits + tt * n_experts;
      const int lane = threadIdx.x & 31;
      moe_detail::write_slots(l, moe_detail::softmax_stats(l, n_experts), lane < top_k ? s_ids[tt * top_k + lane] : 0,
                              top_k, renormalize, s_ids + tt * top_k, weights + tt * top_k);
    }
  } else {
    const float* l = staged ? s_logits : logits;
    for (int tt = warp; tt < n_tokens; tt += kScanThreads / 32)
      moe_detail::route_token(l + int64_t(tt) * n_experts, n_experts, top_k, renormalize, s_ids + tt * top_k,
                              weights + tt * top_k);
  }
  __syncthreads();
  for (int p = threadIdx.x; p < n_pairs; p += kScanThreads) {
    ids[p] = s_ids[p];
    atomicAdd(&next[s_ids[p]], 1);
  }
  __syncthreads();
  const int32_t offset = scan_experts(storage, next[threadIdx.x], n_experts, offsets, active, num_active);
  next[threadIdx.x] = offset;
  __syncthreads();
  if (threadIdx.x < 32) place_pairs(s_ids, 0, (n_pairs + 31) / 32, n_pairs, next, sorted_pairs, pair_rows);
}

struct RoutePermuteOut {
  int32_t *ids;
  float* weights;
  int32_t *offsets, *sorted_pairs, *active, *num_active, *pair_rows;
};

RoutePermuteOut route_permute_out(const Tensor& topk_ids, const Tensor& topk_weights, const MoePermuteBuffers& out) {
  return {topk_ids.data_as<int32_t>(),          topk_weights.data_as<float>(),
          out.perm.expert_offsets.data_as<int32_t>(), out.perm.sorted_pairs.data_as<int32_t>(),
          out.perm.active_experts.data_as<int32_t>(), out.perm.num_active.data_as<int32_t>(),
          out.pair_rows.data_as<int32_t>()};
}

__global__ void __launch_bounds__(kScanThreads)
    route_permute_kernel(const float* __restrict__ logits, int n_tokens, int n_experts, int top_k, bool renormalize,
                         RoutePermuteOut o) {
  grid_dependency_wait();
  launch_dependents();
  route_permute_block(logits, n_tokens, n_experts, top_k, renormalize, o.ids, o.weights, o.offsets, o.sorted_pairs,
                      o.active, o.num_active, o.pair_rows);
}

// The router GEMV in front of route_permute_block (moe_router_route_permute). Block b computes the
// logits of experts [4b, 4b + 4) for every token: kRouterSlices warps per expert row, warp s taking
// the 16-byte vectors s·32 + lane + j·256 of the row (H = 2048: one per lane), so a block streams
// 4 rows and the grid E/4 blocks. Per-token sums: the warp's xor tree, then the slices in order
// (deterministic: equal weight rows give bit-equal logits, so ties stay ties).
constexpr int kRouterRows = 4;
constexpr int kRouterSlices = kScanThreads / 32 / kRouterRows;
constexpr int kRouterVecsPerPass = kRouterSlices * 32;  // 16-byte vectors of a row per pass
constexpr int kRouterPrefetch = 4;                      // passes loaded before the wait (H <= 8192)
constexpr int kRouterTokens = int(kMoeRouterMaxTokens);
constexpr int kMaxNormRouterVecs = int(kMoeNormRouterMaxHidden / 8);  // one per thread
static_assert(kMaxNormRouterVecs <= kScanThreads);

__device__ void dot8(const uint4& wv, const uint4& xv, float& acc) {
  const auto* w2 = reinterpret_cast<const __nv_bfloat162*>(&wv);
  const auto* x2 = reinterpret_cast<const __nv_bfloat162*>(&xv);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 a = __bfloat1622float2(w2[j]), b = __bfloat1622float2(x2[j]);
    acc = fmaf(a.x, b.x, acc);
    acc = fmaf(a.y, b.y, acc);
  }
}

// This block's share of the router GEMV: the weights' first kRouterPrefetch passes are loaded at
// construction, which callers place before their PDL wait (the weights are static, so the loads
// fly under the previous kernel); write_logits then streams the rest against x's 16-byte vectors
// xv(t, v) and writes the block's logits. Every thread of the block calls both.
struct RouterRows {
  const uint4* wrow;
  int row, v0, vecs, n_experts;
  uint4 wv[kRouterPrefetch];

  __device__ RouterRows(const uint4* __restrict__ w, int hidden, int experts)
      : row(int(blockIdx.x) * kRouterRows + int(threadIdx.x) / 32 / kRouterSlices),
        v0(int(threadIdx.x) / 32 % kRouterSlices * 32 + int(threadIdx.x) % 32),
        vecs(hidden / 8),
        n_experts(experts) {
    wrow = w + int64_t(row < n_experts ? row : 0) * vecs;
#pragma unroll
    for (int j = 0; j < kRouterPrefetch; ++j) {
      const int v = v0 + j * kRouterVecsPerPass;
      wv[j] = row < n_experts && v < vecs ? __ldcs(wrow + v) : make_uint4(0, 0, 0, 0);
    }
  }

  template <class X>
  __device__ void write_logits(X xv, int n_tokens, float* __restrict__ logits) const {
    __shared__ float partial[kScanThreads / 32][kRouterTokens];  // [warp][token]
    const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
    float acc[kRouterTokens] = {};
    const auto add = [&](const uint4& wq, int v) {
#pragma unroll
      for (int t = 0; t < kRouterTokens; ++t)
        if (t < n_tokens) dot8(wq, xv(t, v), acc[t]);
    };
    if (row < n_experts) {
#pragma unroll
      for (int j = 0; j < kRouterPrefetch; ++j)
        if (v0 + j * kRouterVecsPerPass < vecs) add(wv[j], v0 + j * kRouterVecsPerPass);
      for (int v = v0 + kRouterPrefetch * kRouterVecsPerPass; v < vecs; v += kRouterVecsPerPass) add(__ldcs(wrow + v), v);
    }
#pragma unroll
    for (int t = 0; t < kRouterTokens; ++t) {
      if (t >= n_tokens) break;
      float s = acc[t];
      for (int off = 16; off; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
      if (lane == 0) partial[warp][t] = s;
    }
    __syncthreads();
    if (int(threadIdx.x) < kRouterRows * n_tokens) {
      const int r = threadIdx.x / n_tokens, t = threadIdx.x % n_tokens, e = int(blockIdx.x) * kRouterRows + r;
      if (e < n_experts) {
        float sum = 0.f;
        for (int s = 0; s < kRouterSlices; ++s) sum += partial[r * kRouterSlices + s][t];
        logits[int64_t(t) * n_experts + e] = sum;
      }
    }
  }
};

template <bool kRoute>  // false: the logits only (one token, routed by the expert kernels)
__global__ void __launch_bounds__(kScanThreads)
    router_route_permute_kernel(const uint4* x, const uint4* __restrict__ w, int hidden,
                                float* __restrict__ logits, int n_tokens, int n_experts, int top_k, bool renormalize,
                                RoutePermuteOut o, unsigned* __restrict__ blocks_done) {
  __shared__ bool last;
  const RouterRows rows(w, hidden, n_experts);
  grid_dependency_wait();
  if constexpr (!kRoute) launch_dependents();  // the next kernel waits for all the logits anyway
  // x through L1 (plain loads, after the wait as in the tile kernels): the block's 4 rows read the
  // same vectors of x, so 3 of 4 reads hit L1 (through L2 alone, T=8 H=4096 read 256 KB per block).
  const int vecs = hidden / 8;
  rows.write_logits([&](int t, int v) { return x[int64_t(t) * vecs + v]; }, n_tokens, logits);
  if constexpr (!kRoute) return;
  // The last block to finish routes (the classic threadfence reduction): every block publishes its
  // logits before counting itself.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(blocks_done, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  // The next kernel may launch now, while this block routes: the other blocks have counted
  // themselves and leave, so its blocks spread over every SM but this one. (Allowed right after the
  // wait, it could fill only the SMs free then, 100 of 132 at Qwen3's 32 blocks of 1024 threads.)
  launch_dependents();
  __threadfence();
  if (threadIdx.x == 0) *blocks_done = 0;  // every block has counted: ready for the next launch
  route_permute_block(logits, n_tokens, n_experts, top_k, renormalize, o.ids, o.weights, o.offsets, o.sorted_pairs,
                      o.active, o.num_active, o.pair_rows);
}

// moe_norm_router_logits: every block norms the token's row in its prologue (thread j of the first
// tpr holding vector j, as rmsnorm_kernel does for one row, so the result is bit-equal) into shared
// memory, then runs the router GEMV on it; block 0 also writes the new residual and the normed row.
__global__ void __launch_bounds__(kScanThreads)
    norm_router_kernel(const __nv_bfloat16* residual, const __nv_bfloat16* add, const __nv_bfloat16* norm_weight,
                       float eps, int tpr, __nv_bfloat16* residual_out, __nv_bfloat16* normed,
                       const uint4* __restrict__ w, int hidden, float* __restrict__ logits, int n_experts) {
  using namespace norm_row_detail;
  __shared__ uint4 row_s[kMaxNormRouterVecs];
  const int j = threadIdx.x, vecs = hidden / 8;
  const auto has = [&](int) { return j < vecs; };
  Bf16x8 v[1], r[1], nw[1], o[1];
  if (has(0)) nw[0].raw = load16(norm_weight + 8 * j);
  const RouterRows rows(w, hidden, n_experts);
  grid_dependency_wait();
  launch_dependents();  // the expert kernels wait for all the logits anyway
  if (has(0)) {
    v[0].raw = load16(add + 8 * j);
    r[0].raw = load16(residual + 8 * j);
  }
  norm_row(v, &r, nw, eps, hidden, tpr, has, o);
  if (has(0)) {
    row_s[j] = o[0].raw;
    if (blockIdx.x == 0) {
      reinterpret_cast<uint4*>(residual_out)[j] = v[0].raw;
      reinterpret_cast<uint4*>(normed)[j] = o[0].raw;
    }
  }
  __syncthreads();
  rows.write_logits([&](int, int v) { return row_s[v]; }, 1, logits);
}

// The data movement kernels below are launched with programmatic dependent launch: every input
// is an activation (or the routing), read after the wait.

// One thread per 8 bf16 (16 bytes) of xs.
__global__ void gather_kernel(const uint4* __restrict__ x, const int32_t* __restrict__ sorted_pairs, int top_k,
                              int64_t vecs_per_row, int64_t total, uint4* __restrict__ xs) {
  grid_dependency_wait();
  launch_dependents();
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / vecs_per_row, col = i % vecs_per_row;
    xs[i] = x[int64_t(sorted_pairs[row] / top_k) * vecs_per_row + col];
  }
}

// One thread per 8 outputs.
__global__ void silu_mul_kernel(const uint4* __restrict__ h, int64_t vecs_per_half, int64_t total,
                                uint4* __restrict__ act) {
  grid_dependency_wait();
  launch_dependents();
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / vecs_per_half, col = i % vecs_per_half;
    union { uint4 raw; __nv_bfloat162 v[4]; } gate, up, out;
    gate.raw = h[row * 2 * vecs_per_half + col];
    up.raw = h[row * 2 * vecs_per_half + vecs_per_half + col];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 g = __bfloat1622float2(gate.v[j]), u = __bfloat1622float2(up.v[j]);
      out.v[j] = __floats2bfloat162_rn(silu(g.x) * u.x, silu(g.y) * u.y);
    }
    act[i] = out.raw;
  }
}

__device__ void load8(const float* p, float (&v)[8]) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
__device__ void load8(const __nv_bfloat16* p, float (&v)[8]) {
  union { uint4 raw; __nv_bfloat162 h[4]; } in;
  in.raw = *reinterpret_cast<const uint4*>(p);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 f = __bfloat1622float2(in.h[j]);
    v[2 * j] = f.x, v[2 * j + 1] = f.y;
  }
}

// Σ_slot weights[pair0 + slot] · y[row(pair0 + slot)][col, col + 8) in fp32, in slot order. The
// loads of up to kSlots slots are issued before the first multiply, so a token's top_k rows cost
// one memory round trip per group, not one per slot.
template <class Y, class Row>
__device__ __forceinline__ void sum_slots(const Y* __restrict__ y, const float* __restrict__ weights, int64_t pair0,
                                          int top_k, int64_t hidden, int64_t col, Row row, float (&acc)[8]) {
  constexpr int kSlots = 8;
#pragma unroll
  for (int j = 0; j < 8; ++j) acc[j] = 0.f;
  for (int k0 = 0; k0 < top_k; k0 += kSlots) {
    float w[kSlots], v[kSlots][8];
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      if (k0 + s >= top_k) break;
      const int64_t pair = pair0 + k0 + s;
      w[s] = weights[pair];
      load8(y + row(pair) * hidden + col, v[s]);
    }
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      if (k0 + s >= top_k) break;
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[j] = fmaf(w[s], v[s][j], acc[j]);
    }
  }
}

__device__ __forceinline__ uint4 pack_bf16x8(const float (&acc)[8]) {
  union { uint4 raw; __nv_bfloat162 h[4]; } o;
#pragma unroll
  for (int j = 0; j < 4; ++j) o.h[j] = __floats2bfloat162_rn(acc[2 * j], acc[2 * j + 1]);
  return o.raw;
}

// One thread per 8 outputs of out [T, H].
template <class Y>
__global__ void combine_kernel(const Y* __restrict__ y, const float* __restrict__ weights,
                               const int32_t* __restrict__ rows, int top_k, int64_t hidden, int64_t total,
                               __nv_bfloat16* __restrict__ out) {
  const int64_t vecs_per_row = hidden / 8;
  grid_dependency_wait();
  launch_dependents();
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / vecs_per_row, col = (i % vecs_per_row) * 8;
    float acc[8];
    sum_slots(y, weights, t * top_k, top_k, hidden, col, [&](int64_t pair) { return rows ? int64_t(rows[pair]) : pair; },
              acc);
    reinterpret_cast<uint4*>(out)[i] = pack_bf16x8(acc);
  }
}

// moe_combine_add_rmsnorm: one block, thread j holding vector j of the token's row (tpr threads as
// rmsnorm picks them for one row): the slot sum as combine_kernel forms it, then add_rmsnorm's row.
// One block, so the residual is updated in place (each thread rewrites only its own vector).
constexpr int kCombineNormThreads = int(kMoeCombineNormMaxHidden / 8);
__global__ void __launch_bounds__(kCombineNormThreads)
    combine_norm_kernel(const float* __restrict__ y, const float* __restrict__ weights, int top_k, int hidden,
                        __nv_bfloat16* residual, const __nv_bfloat16* __restrict__ norm_weight, float eps, int tpr,
                        __nv_bfloat16* __restrict__ out, bool early_dependents) {
  using namespace norm_row_detail;
  const int j = threadIdx.x;
  const auto has = [&](int) { return j < hidden / 8; };
  Bf16x8 v[1], r[1], nw[1], o[1];
  if (has(0)) nw[0].raw = load16(norm_weight + 8 * j);
  release_dependents_and_wait(early_dependents);  // next: the qkv GEMV, or the logit-row gather (waits first)
  if (has(0)) {
    float acc[8];
    sum_slots(y, weights, 0, top_k, hidden, 8 * j, [](int64_t pair) { return pair; }, acc);
    v[0].raw = pack_bf16x8(acc);
    r[0].raw = load16(residual + 8 * j);
  }
  norm_row(v, &r, nw, eps, hidden, tpr, has, o);
  if (has(0)) {
    reinterpret_cast<uint4*>(residual)[j] = v[0].raw;
    reinterpret_cast<uint4*>(out)[j] = o[0].raw;
  }
}

void check_cuda_contiguous(const Tensor& t, DType dtype, const char* op, const char* name) {
  MXMOE_CHECK(t.device() == Device::cuda && t.is_contiguous() && t.dtype() == dtype, op, ": ", name,
              " must be a contiguous CUDA ", dtype_name(dtype), " tensor, got ", dtype_name(t.dtype()), " ",
              shape_str(t.shape()));
}

void check_rows(const Tensor& t, int64_t rows, int64_t cols, const char* op, const char* name) {
  MXMOE_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, op, ": ", name, " ", shape_str(t.shape()),
              ", expected [", rows, ", ", cols, "]");
  MXMOE_CHECK(cols % 8 == 0, op, ": ", name, " row length ", cols, " must be a multiple of 8");
}

}  // namespace

int64_t moe_permute_chunks(int64_t n_pairs) { return std::max<int64_t>(1, (n_pairs + kChunk - 1) / kChunk); }

namespace {

void check_buffers(const MoePermuteBuffers& out, int64_t n_pairs, const char* op) {
  const int64_t n_experts = out.perm.active_experts.numel();
  MXMOE_CHECK(out.perm.sorted_pairs.numel() == n_pairs && out.pair_rows.numel() == n_pairs &&
                  out.perm.expert_offsets.numel() == n_experts + 1 && out.perm.num_active.numel() == 1 &&
                  out.chunk_counts.numel() == moe_permute_chunks(n_pairs) * n_experts,
              op, ": buffers made for ", out.perm.sorted_pairs.numel(), " pairs and ", n_experts, " experts, given ",
              n_pairs, " pairs (use moe_permute_buffers)");
}

}  // namespace

MoePermuteBuffers moe_permute_buffers(int64_t n_pairs, int64_t n_experts) {
  MXMOE_CHECK(n_experts >= 1 && n_experts <= kMoeMaxExperts, "moe_permute: ", n_experts, " experts (supported: 1..",
              kMoeMaxExperts, ")");
  MoePermuteBuffers b;
  b.perm.expert_offsets = Tensor::empty({n_experts + 1}, DType::i32, Device::cuda);
  b.perm.sorted_pairs = Tensor::empty({n_pairs}, DType::i32, Device::cuda);
  b.perm.active_experts = Tensor::empty({n_experts}, DType::i32, Device::cuda);
  b.perm.num_active = Tensor::empty({1}, DType::i32, Device::cuda);
  b.pair_rows = Tensor::empty({n_pairs}, DType::i32, Device::cuda);
  b.chunk_counts = Tensor::empty({moe_permute_chunks(n_pairs), n_experts}, DType::i32, Device::cuda);
  b.blocks_done = Tensor::empty({1}, DType::i32, Device::cuda);
  CUDA_CHECK(cudaMemset(b.blocks_done.data(), 0, sizeof(int32_t)));
  return b;
}

void moe_permute(const Tensor& topk_ids, const MoePermuteBuffers& out, cudaStream_t stream) {
  check_cuda_contiguous(topk_ids, DType::i32, "moe_permute", "topk_ids");
  const int64_t n_pairs = topk_ids.numel(), n_experts = out.perm.active_experts.numel();
  check_buffers(out, n_pairs, "moe_permute");
  const int64_t chunks = moe_permute_chunks(n_pairs);
  const size_t smem = size_t(n_experts) * sizeof(int32_t);
  auto* counts = out.chunk_counts.data_as<int32_t>();
  count_kernel<<<unsigned(chunks), kChunk, smem, stream>>>(topk_ids.data_as<const int32_t>(), n_pairs,
                                                          int(n_experts), counts);
  CUDA_CHECK_LAUNCH();
  scan_kernel<<<1, kScanThreads, 0, stream>>>(counts, chunks, int(n_experts), out.perm.expert_offsets.data_as<int32_t>(),
                                              out.perm.active_experts.data_as<int32_t>(),
                                              out.perm.num_active.data_as<int32_t>());
  CUDA_CHECK_LAUNCH();
  place_kernel<<<unsigned(chunks), 32, smem, stream>>>(topk_ids.data_as<const int32_t>(), n_pairs, int(n_experts),
                                                       counts, out.perm.sorted_pairs.data_as<int32_t>(),
                                                       out.pair_rows.data_as<int32_t>());
  CUDA_CHECK_LAUNCH();
}

void moe_route_permute(const Tensor& logits, int top_k, bool renormalize, const Tensor& topk_ids,
                       const Tensor& topk_weights, const MoePermuteBuffers& out, cudaStream_t stream) {
  const int64_t n_pairs = topk_ids.numel();
  MXMOE_CHECK(logits.dim() == 2 && logits.size(1) == out.perm.active_experts.numel(), "moe_route_permute: logits ",
              shape_str(logits.shape()), " for buffers of ", out.perm.active_experts.numel(), " experts");
  if (n_pairs > kMoeFusedRoutePairs) {
    moe_route(logits, top_k, renormalize, topk_ids, topk_weights, stream);
    moe_permute(topk_ids, out, stream);
    return;
  }
  check_moe_route_args(logits, top_k, topk_ids, topk_weights, Device::cuda, "moe_route_permute");
  check_buffers(out, n_pairs, "moe_route_permute");
  launch_pdl(route_permute_kernel, dim3(1), dim3(kScanThreads), 0, stream, logits.data_as<const float>(),
             int(logits.size(0)), int(logits.size(1)), top_k, renormalize,
             route_permute_out(topk_ids, topk_weights, out));
}

namespace {

// The router GEMV's operands: x [T, H] bf16, router_weight [E, H] bf16, router_logits [T, E] f32.
void check_router_args(const Tensor& x, const Tensor& router_weight, const Tensor& router_logits, const char* op) {
  check_cuda_contiguous(x, DType::bf16, op, "x");
  check_cuda_contiguous(router_weight, DType::bf16, op, "router_weight");
  check_cuda_contiguous(router_logits, DType::f32, op, "router_logits");
  MXMOE_CHECK(x.dim() == 2 && router_weight.dim() == 2 && router_weight.size(1) == x.size(1), op, ": x ",
              shape_str(x.shape()), " and router_weight ", shape_str(router_weight.shape()), " must be [T, H] and [E, H]");
  MXMOE_CHECK(router_logits.shape() == Shape({x.size(0), router_weight.size(0)}), op, ": router_logits ",
              shape_str(router_logits.shape()), ", expected [", x.size(0), ", ", router_weight.size(0), "]");
}

// The threads rmsnorm gives one row of H (so a kernel norming the row in its prologue reduces the
// sum of squares in the same order, bit-equal), checked to hold the row at one vector a thread
// within the launch's `max_threads`.
int one_row_norm_threads(int64_t hidden, int max_threads, const char* op) {
  const int tpr = detail::rmsnorm_threads_per_row(1, hidden / 8);
  MXMOE_CHECK(tpr >= hidden / 8 && tpr <= max_threads, op, ": rmsnorm gives one row of H = ", hidden, " ", tpr,
              " threads; this launch holds one vector a thread in at most ", max_threads);
  return tpr;
}

}  // namespace

bool moe_router_fusable(int64_t n_tokens, int64_t n_experts, int64_t hidden, int top_k) {
  return n_tokens >= 1 && n_tokens <= kMoeRouterMaxTokens && n_tokens * top_k <= kMoeFusedRoutePairs &&
         n_tokens * n_experts <= kStagedLogits && hidden % 8 == 0 && hidden / 8 <= (int64_t(1) << 30);
}

void moe_router_route_permute(const Tensor& x, const Tensor& router_weight, const Tensor& router_logits, int top_k,
                              bool renormalize, const Tensor& topk_ids, const Tensor& topk_weights,
                              const MoePermuteBuffers& out, cudaStream_t stream) {
  constexpr const char* op = "moe_router_route_permute";
  check_router_args(x, router_weight, router_logits, op);
  const int64_t n_tokens = x.size(0), n_experts = router_weight.size(0), hidden = x.size(1);
  MXMOE_CHECK(out.perm.active_experts.numel() == n_experts, op, ": buffers of ", out.perm.active_experts.numel(),
              " experts for a router of ", n_experts);
  check_moe_route_args(router_logits, top_k, topk_ids, topk_weights, Device::cuda, op);
  check_buffers(out, topk_ids.numel(), op);
  check_cuda_contiguous(out.blocks_done, DType::i32, op, "blocks_done");
  MXMOE_CHECK(moe_router_fusable(n_tokens, n_experts, hidden, top_k), op, ": T = ", n_tokens, ", E = ", n_experts,
              ", H = ", hidden, ", k = ", top_k, " is not fusable (T <= ", kMoeRouterMaxTokens, ", T·E <= ",
              kStagedLogits, ", H a multiple of 8)");
  launch_pdl(router_route_permute_kernel<true>, dim3(unsigned((n_experts + kRouterRows - 1) / kRouterRows)),
             dim3(kScanThreads), 0, stream, x.data_as<const uint4>(), router_weight.data_as<const uint4>(),
             int(hidden), router_logits.data_as<float>(), int(n_tokens), int(n_experts), top_k, renormalize,
             route_permute_out(topk_ids, topk_weights, out),
             reinterpret_cast<unsigned*>(out.blocks_done.data_as<int32_t>()));
}

bool moe_norm_router_fusable(int64_t n_tokens, int64_t hidden) {
  return n_tokens == 1 && hidden > 0 && hidden % 8 == 0 && hidden <= kMoeNormRouterMaxHidden;
}

void moe_norm_router_logits(const Tensor& residual, const Tensor& add, const Tensor& norm_weight, float eps,
                            const Tensor& residual_out, const Tensor& normed, const Tensor& router_weight,
                            const Tensor& router_logits, cudaStream_t stream) {
  constexpr const char* op = "moe_norm_router_logits";
  check_router_args(normed, router_weight, router_logits, op);
  const int64_t hidden = normed.size(1), n_experts = router_weight.size(0);
  const Shape row{1, hidden};
  for (const auto& [t, name] : {std::pair{&residual, "residual"}, {&add, "add"}, {&residual_out, "residual_out"}}) {
    check_cuda_contiguous(*t, DType::bf16, op, name);
    MXMOE_CHECK(t->shape() == row, op, ": ", name, " ", shape_str(t->shape()), ", expected ", shape_str(row));
  }
  check_cuda_contiguous(norm_weight, DType::bf16, op, "norm_weight");
  MXMOE_CHECK(norm_weight.numel() == hidden, op, ": norm_weight of ", norm_weight.numel(), " elements for H = ", hidden);
  MXMOE_CHECK(moe_norm_router_fusable(normed.size(0), hidden), op, ": T = ", normed.size(0), ", H = ", hidden,
              " (one token, H a multiple of 8 and at most ", kMoeNormRouterMaxHidden, ")");
  MXMOE_CHECK(residual_out.data() != residual.data(), op,
              ": residual_out must not be residual (other blocks still read it while block 0 writes)");
  const int tpr = one_row_norm_threads(hidden, kScanThreads, op);
  launch_pdl(norm_router_kernel, dim3(unsigned((n_experts + kRouterRows - 1) / kRouterRows)), dim3(kScanThreads), 0,
             stream, residual.data_as<const __nv_bfloat16>(), add.data_as<const __nv_bfloat16>(),
             norm_weight.data_as<const __nv_bfloat16>(), eps, tpr, residual_out.data_as<__nv_bfloat16>(),
             normed.data_as<__nv_bfloat16>(), router_weight.data_as<const uint4>(), int(hidden),
             router_logits.data_as<float>(), int(n_experts));
}

void moe_combine_add_rmsnorm(const Tensor& y, const Tensor& weights, const Tensor& residual, const Tensor& norm_weight,
                             float eps, const Tensor& out, bool release_next_early, cudaStream_t stream) {
  constexpr const char* op = "moe_combine_add_rmsnorm";
  check_cuda_contiguous(y, DType::f32, op, "y");
  check_cuda_contiguous(weights, DType::f32, op, "weights");
  check_cuda_contiguous(residual, DType::bf16, op, "residual");
  check_cuda_contiguous(norm_weight, DType::bf16, op, "norm_weight");
  check_cuda_contiguous(out, DType::bf16, op, "out");
  const int64_t hidden = residual.dim() == 2 ? residual.size(1) : 0, top_k = weights.numel();
  MXMOE_CHECK(residual.dim() == 2 && residual.size(0) == 1 && out.shape() == residual.shape(), op, ": residual ",
              shape_str(residual.shape()), " and out ", shape_str(out.shape()), " must be the same [1, H]");
  MXMOE_CHECK(moe_combine_norm_fusable(hidden) && norm_weight.numel() == hidden, op, ": H = ", hidden,
              " (a multiple of 8, at most ", kMoeCombineNormMaxHidden, "), norm_weight of ", norm_weight.numel());
  MXMOE_CHECK(top_k >= 1 && y.shape() == Shape({top_k, hidden}), op, ": y ", shape_str(y.shape()), " for ", top_k,
              " slot weights, expected [", top_k, ", ", hidden, "]");
  const int tpr = one_row_norm_threads(hidden, kCombineNormThreads, op);
  launch_pdl(combine_norm_kernel, dim3(1), dim3(unsigned(std::max(tpr, 32))), 0, stream, y.data_as<const float>(),
             weights.data_as<const float>(), int(top_k), int(hidden), residual.data_as<__nv_bfloat16>(),
             norm_weight.data_as<const __nv_bfloat16>(), eps, tpr, out.data_as<__nv_bfloat16>(),
             release_next_early && early_dependents_enabled());
}

void moe_router_logits(const Tensor& x, const Tensor& router_weight, const Tensor& router_logits, cudaStream_t stream) {
  constexpr const char* op = "moe_router_logits";
  check_router_args(x, router_weight, router_logits, op);
  const int64_t n_tokens = x.size(0), n_experts = router_weight.size(0), hidden = x.size(1);
  MXMOE_CHECK(n_tokens >= 1 && n_tokens <= kMoeRouterMaxTokens && hidden % 8 == 0 && hidden / 8 <= (int64_t(1) << 30),
              op, ": T = ", n_tokens, ", H = ", hidden, " (T <= ", kMoeRouterMaxTokens, ", H a multiple of 8)");
  launch_pdl(router_route_permute_kernel<false>, dim3(unsigned((n_experts + kRouterRows - 1) / kRouterRows)),
             dim3(kScanThreads), 0, stream, x.data_as<const uint4>(), router_weight.data_as<const uint4>(),
             int(hidden), router_logits.data_as<float>(), int(n_tokens), int(n_experts), 1, false, RoutePermuteOut{},
             static_cast<unsigned*>(nullptr));
}

void moe_gather_rows(const Tensor& x, const MoePermutation& perm, int top_k, const Tensor& xs, cudaStream_t stream) {
  check_cuda_contiguous(x, DType::bf16, "moe_gather_rows", "x");
  check_cuda_contiguous(xs, DType::bf16, "moe_gather_rows", "xs");
  MXMOE_CHECK(x.dim() == 2, "moe_gather_rows: x must be [T, H], got ", shape_str(x.shape()));
  const int64_t m = x.size(0) * top_k, hidden = x.size(1);
  check_rows(xs, m, hidden, "moe_gather_rows", "xs");
  MXMOE_CHECK(perm.sorted_pairs.numel() == m, "moe_gather_rows: permutation of ", perm.sorted_pairs.numel(),
              " pairs for ", m);
  const int64_t total = m * hidden / 8;
  if (total == 0) return;
  launch_pdl(gather_kernel, dim3(grid_for(total)), dim3(kThreads), 0, stream, x.data_as<const uint4>(),
             perm.sorted_pairs.data_as<const int32_t>(), top_k, hidden / 8, total, xs.data_as<uint4>());
}

void moe_silu_mul(const Tensor& h, const Tensor& act, cudaStream_t stream) {
  check_cuda_contiguous(h, DType::bf16, "moe_silu_mul", "h");
  check_cuda_contiguous(act, DType::bf16, "moe_silu_mul", "act");
  MXMOE_CHECK(h.dim() == 2, "moe_silu_mul: h must be [M, 2I], got ", shape_str(h.shape()));
  const int64_t m = h.size(0), inter = h.size(1) / 2;
  MXMOE_CHECK(h.size(1) == 2 * inter, "moe_silu_mul: odd width ", h.size(1));
  check_rows(act, m, inter, "moe_silu_mul", "act");
  const int64_t total = m * inter / 8;
  if (total == 0) return;
  launch_pdl(silu_mul_kernel, dim3(grid_for(total)), dim3(kThreads), 0, stream, h.data_as<const uint4>(), inter / 8,
             total, act.data_as<uint4>());
}

void moe_combine(const Tensor& y, const Tensor& weights, const Tensor* rows, int top_k, const Tensor& out,
                 cudaStream_t stream) {
  check_cuda_contiguous(out, DType::bf16, "moe_combine", "out");
  check_cuda_contiguous(weights, DType::f32, "moe_combine", "weights");
  MXMOE_CHECK(out.dim() == 2, "moe_combine: out must be [T, H], got ", shape_str(out.shape()));
  const int64_t n_tokens = out.size(0), hidden = out.size(1), n_pairs = n_tokens * top_k;
  MXMOE_CHECK(y.dtype() == DType::f32 || y.dtype() == DType::bf16, "moe_combine: y must be f32 or bf16, got ",
              dtype_name(y.dtype()));
  check_cuda_contiguous(y, y.dtype(), "moe_combine", "y");
  check_rows(y, n_pairs, hidden, "moe_combine", "y");
  MXMOE_CHECK(weights.numel() == n_pairs, "moe_combine: ", weights.numel(), " weights for ", n_pairs, " pairs");
  if (rows) {
    check_cuda_contiguous(*rows, DType::i32, "moe_combine", "rows");
    MXMOE_CHECK(rows->numel() == n_pairs, "moe_combine: ", rows->numel(), " rows for ", n_pairs, " pairs");
  }
  const int64_t total = n_tokens * hidden / 8;
  if (total == 0) return;
  const int32_t* r = rows ? rows->data_as<const int32_t>() : nullptr;
  const dim3 grid(grid_for(total)), block(kThreads);
  if (y.dtype() == DType::f32)
    launch_pdl(combine_kernel<float>, grid, block, 0, stream, y.data_as<const float>(), weights.data_as<const float>(),
               r, top_k, hidden, total, out.data_as<__nv_bfloat16>());
  else
    launch_pdl(combine_kernel<__nv_bfloat16>, grid, block, 0, stream, y.data_as<const __nv_bfloat16>(),
               weights.data_as<const float>(), r, top_k, hidden, total, out.data_as<__nv_bfloat16>());
}

}  // namespace mxmoe
