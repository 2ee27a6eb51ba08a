#pragma once
// Device machinery shared by the decode-size W8A16 kernels (kernels/w8a16_gemv.cu, kernels/moe_decode.cu):
// weight rows (MXFP8 or bf16) turned into bf16 tensor-core operands, activations staged in shared
// memory, and one kernel template that streams 16-row weight tiles against up to 16 token rows.
//
// Why tensor cores for a GEMV: with M = 16 tokens every weight byte costs 16 FMAs, more than the
// CUDA cores issue at full memory bandwidth. mma.m16n8k16 does them; the cores only dequantize.
//
// Work split (a "problem" supplies the rows, token rows and epilogue; see tile_kernel):
//   block   = kWarps warps, one 16-row tile each (a job's tile group);
//   cluster = the S blocks that split the job's K range (split-K); partial sums meet in distributed
//             shared memory, so no workspace and no atomics;
//   warp    = lane (g = lane/4, t = lane%4) loads 16 consecutive k of tile rows g and g+8 at
//             k + 16t: a step covers 16 rows x 64 k, kSteps steps are in flight per lane.
//
// Programmatic dependent launch (PDL): the kernels are launched so that they may start while the
// previous kernel on the stream finishes. Before `griddepcontrol.wait` a block reads only what the
// previous kernel cannot have written: a problem whose jobs are fixed by the shape (dense GEMV,
// kJobsBeforeWait) issues its first weight loads there, so a kernel's launch and first memory latency
// hide under its predecessor's tail; problems routed by the previous kernel's output wait first
// (MoE gate/up), while the MoE down kernel, routed by the kernel two back, prefetches too.
// After the wait a block lets the next kernel start (`griddepcontrol.launch_dependents`), so when
// a kernel starts, every kernel before its predecessor has finished. Weights must not be written
// by the kernel launched right before (they are static).
//
// Operand order: an mma lane holds A columns {2t, 2t+1} and {2t+8, 2t+9} of rows g, g+8 and B rows
// {2t, 2t+1}, {2t+8, 2t+9}. A dot product may visit k in any order, so each lane feeds its own 4
// consecutive k (k0..k3) as columns (2t, 2t+1) <- (k0, k2) and (2t+8, 2t+9) <- (k1, k3): the order the
// fp8 -> bf16 bit trick produces. Activations are staged with every group of 4 stored as
// (x0, x2, x1, x3), so one 16-byte shared load gives a lane's B registers for 2 mmas.
#include <cooperative_groups.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>

#include "engine/cuda_check.h"
#include "engine/error.h"
#include "engine/gpu_info.h"
#include "engine/memory.h"
#include "kernels/mxfp8_format.h"
#include "kernels/pdl.cuh"
#include "kernels/silu.cuh"
#include "kernels/smem_limit.h"
#include "kernels/w8a16_gemm_dequant.cuh"
#include "kernels/w8a16_gemv.h"

namespace mxmoe::w8a16 {

namespace cg = cooperative_groups;

constexpr int kWarps = 8;                  // warps (16-row tiles) per block
constexpr int kThreads = kWarps * 32;
constexpr int kTileRows = 16;              // mma M
constexpr int kLaneK = 16;                 // k one lane loads per row and step
constexpr int kStepK = 4 * kLaneK;         // k per warp step (the 4 lanes of a row side by side)
constexpr int kSuperK = 256;               // k per superstep; shared-memory chunks are multiples of it
constexpr int kMaxSplit = 16;              // cluster size (above 8 is Hopper's non-portable size)
constexpr int kXPad = 8;                   // bf16 pad per staged row: a row is 16 bytes off the bank pattern
constexpr size_t kSmemBudget = 100 * 1024;  // per block: two blocks fit an SM

// ---- bf16x2 bit helpers ----

// (a0, a1), (a2, a3) -> lo = (a0, a2), hi = (a1, a3): 16-bit halves of two words.
__device__ __forceinline__ void interleave(uint32_t w0, uint32_t w1, uint32_t& lo, uint32_t& hi) {
  lo = __byte_perm(w0, w1, 0x5410);
  hi = __byte_perm(w0, w1, 0x7632);
}

// 8 activations (16 bytes) in the staged order: each group of 4 as (x0, x2, x1, x3).
__device__ __forceinline__ uint4 interleaved(uint4 in) {
  uint4 out;
  interleave(in.x, in.y, out.x, out.y);
  interleave(in.z, in.w, out.z, out.w);
  return out;
}

// ---- weight rows ----
// Each format loads a Chunk (kLaneK consecutive k of one row) and turns it into 8 bf16x2 operand
// words: a[2j] = (k4j, k4j+2), a[2j+1] = (k4j+1, k4j+3) for j = 0..3.

// MXFP8 rows: elems [rows, K] e4m3, scales [rows, K/32] e8m0.
struct Fp8Rows {
  const uint8_t* elems;
  const uint8_t* scales;
  int64_t k;
  static constexpr int kSteps = 4;  // 2 rows x 4 x 16 B in flight per lane
  struct Chunk {
    uint4 q;         // 16 e4m3
    uint32_t scale;  // their block's e8m0 byte
  };
  __host__ __device__ Fp8Rows offset(int64_t rows) const { return {elems + rows * k, scales + rows * (k / kMxBlock), k}; }
  __device__ static Chunk zero() { return {make_uint4(0, 0, 0, 0), 0}; }
  __device__ Chunk load(int64_t row, int64_t kk) const {
    return {__ldcs(reinterpret_cast<const uint4*>(elems + row * k + kk)), scales[row * (k / kMxBlock) + kk / kMxBlock]};
  }
  // 16 e4m3 as operand words of value · 2^-120: e4m3 s.eeee.mmm in the high byte of a 16-bit half,
  // shifted right by 4, is a bf16 of the same bits with exponent bias 7 instead of 127, subnormals
  // included (kernels/w8a16_gemm_dequant.cuh).
  __device__ static void unscaled(uint4 q, uint32_t (&a)[8]) {
    const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      a[2 * j + 1] = (w[j] & 0x80008000u) | ((w[j] & 0x7f007f00u) >> 4);                    // bytes 1, 3
      a[2 * j] = ((w[j] << 8) & 0x80008000u) | (((w[j] << 8) & 0x7f007f00u) >> 4);          // bytes 0, 2
    }
  }
  // Applies scale byte s: fast, one exact multiply by 2^(s-7) (a normal bf16 for s <= 134, i.e.
  // block amax below ~2^15); wide, any s, x 2^120 first (w8a16_gemm_dequant.cuh's scale_factor).
  template <bool kWide>
  __device__ static void scale(uint32_t (&a)[8], uint32_t s) {
    const uint32_t f = scale_factor<kWide>(s);
#pragma unroll
    for (int i = 0; i < 8; ++i) a[i] = bf16x2_mul(kWide ? bf16x2_mul(a[i], kTwoPow120) : a[i], f);
  }
  __device__ static void operands(const Chunk& c, uint32_t (&a)[8]) {
    unscaled(c.q, a);
    if (c.scale <= 134u) scale<false>(a, c.scale);
    else scale<true>(a, c.scale);
  }
};

// bf16 rows [rows, K].
struct Bf16Rows {
  const __nv_bfloat16* w;
  int64_t k;
  static constexpr int kSteps = 2;  // 2 rows x 2 x 32 B in flight per lane
  struct Chunk {
    uint4 lo, hi;  // 16 bf16
  };
  __host__ __device__ Bf16Rows offset(int64_t rows) const { return {w + rows * k, k}; }
  __device__ static Chunk zero() { return {make_uint4(0, 0, 0, 0), make_uint4(0, 0, 0, 0)}; }
  __device__ Chunk load(int64_t row, int64_t kk) const {
    const uint4* p = reinterpret_cast<const uint4*>(w + row * k + kk);
    return {__ldcs(p), __ldcs(p + 1)};
  }
  __device__ static void operands(const Chunk& c, uint32_t (&a)[8]) {
    const uint32_t w[8] = {c.lo.x, c.lo.y, c.lo.z, c.lo.w, c.hi.x, c.hi.y, c.hi.z, c.hi.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) interleave(w[2 * j], w[2 * j + 1], a[2 * j], a[2 * j + 1]);
  }
};

// d += A·B for one m16n8k16 bf16 tile with fp32 accumulators.
__device__ __forceinline__ void mma_bf16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// acc[h] += the lane's 16 k of tile rows g, g+8 (a0, a1: W::operands) times staged token rows h·8 + g
// (zeros from row mcount on) at staged column `col`: 4 mmas per 8-token tile.
template <int NT>
__device__ __forceinline__ void mma_chunk(const uint32_t (&a0)[8], const uint32_t (&a1)[8], const __nv_bfloat16* xs,
                                          int x_stride, int col, int mcount, int g, float (&acc)[NT][4]) {
#pragma unroll
  for (int h = 0; h < NT; ++h) {
    const int m = h * 8 + g;
    uint4 xa = make_uint4(0, 0, 0, 0), xb = xa;
    if (m < mcount) {
      const uint4* src = reinterpret_cast<const uint4*>(xs + m * x_stride + col);
      xa = src[0];
      xb = src[1];
    }
    mma_bf16(acc[h], a0[0], a1[0], a0[1], a1[1], xa.x, xa.y);
    mma_bf16(acc[h], a0[2], a1[2], a0[3], a1[3], xa.z, xa.w);
    mma_bf16(acc[h], a0[4], a1[4], a0[5], a1[5], xb.x, xb.y);
    mma_bf16(acc[h], a0[6], a1[6], a0[7], a1[7], xb.z, xb.w);
  }
}

// ---- launch plan ----

// How a problem's K range is cut: `splits` blocks per job (one cluster), each a slice of
// `slice_k`, staged through shared memory `chunk_k` at a time (one chunk unless K is huge).
struct Plan {
  int splits = 1;
  int64_t slice_k = 0;
  int64_t chunk_k = 0;
  int x_stride = 0;        // bf16 per staged token row: chunk_k + kXPad
  size_t x_bytes = 0;      // staged activations; the split-K partials follow
  size_t smem_bytes = 0;
  bool pdl = true;         // launch with programmatic stream serialization
  // Refill a step's weight registers as soon as they are converted (loads stay in flight across
  // supersteps) or all at once after each superstep. Measured on H100 (bench-gemv, no PDL): per
  // step took Qwen3 o_proj 4096->2048 M=1 (one wave) from 10.0 to 8.7 us but lm_head
  // 2048->151936 (many waves) from 117 to 125 us; so per step for one-wave grids only.
  bool rolling = true;
};

// The job a block works on.
template <class W>
struct Job {
  W w;         // this job's weight rows
  int group;   // tile group: the block's warps take tiles group·kWarps + warp
  int tokens;  // token rows (dense: M; MoE: the expert's pairs)
  int first;   // MoE: index of the expert's first pair in sorted_pairs
};

// A problem P provides:
//   using Weights (Fp8Rows / Bf16Rows); static constexpr int kNTiles (8-token mma tiles: 1, 2 or 4);
//   static constexpr bool kRouted: MoE experts (PDL only where the grid fits at once);
//   static constexpr bool kJobsBeforeWait: job() and row() may run before the PDL wait (they read
//     nothing the previous kernel writes);
//   Plan plan; int64_t k (reduction length);
//   const int* route()                           called by every thread before job(): a problem that
//     routes itself (MoE at one token) finds its experts into shared memory and returns them; else nullptr;
//   bool job(int index, Job<Weights>&, const int* routed)  false: nothing to do (the whole cluster returns);
//   int64_t row(const Job&, int tile, int r)     weight row of tile row r (0..15), -1 past the end;
//   const __nv_bfloat16* x_row(const Job&, int m)  token m's activations [k];
//   void store(const Job&, int tile, int g, int t, int m0, const float (&acc)[kNTiles][4])
//     acc[h] = mma accumulators: (row g, tokens m0+8h+2t, +1), (row g+8, same tokens).
template <class P>
__global__ void __launch_bounds__(kThreads, 2) tile_kernel(const P p) {
  using W = typename P::Weights;
  using Chunk = typename W::Chunk;
  constexpr int NT = P::kNTiles;
  constexpr int kSteps = W::kSteps;
  constexpr int kSuper = kSteps * kStepK;
  static_assert(kSuperK % kSuper == 0);
  extern __shared__ __align__(16) unsigned char smem[];
  auto* xs = reinterpret_cast<__nv_bfloat16*>(smem);             // [NT·8][x_stride], groups of 4 interleaved
  auto* partial = reinterpret_cast<float*>(smem + p.plan.x_bytes);  // [kWarps][NT][4][32]

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int split = int(blockIdx.x) % p.plan.splits;
  if constexpr (!P::kJobsBeforeWait) grid_dependency_wait();
  Job<W> job;
  const int* routed = p.route();
  if (!p.job(int(blockIdx.x) / p.plan.splits, job, routed)) return;
  const int tile = job.group * kWarps + warp;
  const int64_t r0 = p.row(job, tile, g), r1 = p.row(job, tile, g + 8);
  const int64_t kb = split * p.plan.slice_k, ke = std::min<int64_t>(p.k, kb + p.plan.slice_k);
  const auto chunk_end = [&](int64_t c) { return std::min(ke, c + p.plan.chunk_k); };

  Chunk w[kSteps][2];
  auto load_step = [&](int s, int64_t k0, int64_t end) {
    const int64_t kk = k0 + s * kStepK + t * kLaneK;
    w[s][0] = r0 >= 0 && kk < end ? job.w.load(r0, kk) : W::zero();
    w[s][1] = r1 >= 0 && kk < end ? job.w.load(r1, kk) : W::zero();
  };
  auto load = [&](int64_t k0, int64_t end) {
#pragma unroll
    for (int s = 0; s < kSteps; ++s) load_step(s, k0, end);
  };

  // The first weights fly while the activations are staged (and, with kJobsBeforeWait, while the
  // previous kernel finishes). (Asking L2 for the warp's whole slice first, one
  // cp.async.bulk.prefetch.L2 per row, measured slower on H100, bench-moe expert kernels: Qwen3 T=1
  // 24.6 -> 26.3 us, T=8 111.6 -> 130.8, Mixtral T=1 149.7 -> 182.0.)
  load(kb, chunk_end(kb));
  bool loaded = true;
  if constexpr (P::kJobsBeforeWait) grid_dependency_wait();
  launch_dependents();

  for (int m0 = 0; m0 < job.tokens; m0 += NT * 8) {  // token passes: only MoE experts with > 8·NT pairs loop
    const int mcount = std::min(job.tokens - m0, NT * 8);
    float acc[NT][4] = {};
    for (int64_t c = kb; c < ke; c += p.plan.chunk_k) {
      const int64_t ce = chunk_end(c);
      if (!loaded) load(c, ce);
      loaded = false;
      __syncthreads();  // the previous chunk's readers are done with xs
      // Stage x[m0 .. m0+mcount)[c, c + round_up(ce - c, kSuperK)), zeros past ce.
      const int vecs = int((ce - c + kSuperK - 1) / kSuperK * kSuperK / 8);
      for (int i = threadIdx.x; i < mcount * vecs; i += kThreads) {
        const int m = i / vecs, v = i % vecs;
        const int64_t kk = c + int64_t(v) * 8;
        uint4 in = make_uint4(0, 0, 0, 0);
        if (kk < ce) in = *reinterpret_cast<const uint4*>(p.x_row(job, m0 + m) + kk);
        *reinterpret_cast<uint4*>(xs + m * p.plan.x_stride + v * 8) = interleaved(in);
      }
      __syncthreads();
      for (int64_t k0 = c; k0 < ce; k0 += kSuper) {
        const bool more = k0 + kSuper < ce;
#pragma unroll
        for (int s = 0; s < kSteps; ++s) {
          uint32_t a0[8], a1[8];
          W::operands(w[s][0], a0);
          W::operands(w[s][1], a1);
          if (more && p.plan.rolling) load_step(s, k0 + kSuper, ce);
          mma_chunk<NT>(a0, a1, xs, p.plan.x_stride, int(k0 - c) + s * kStepK + t * kLaneK, mcount, g, acc);
        }
        if (more && !p.plan.rolling) load(k0 + kSuper, ce);
      }
    }

    if (p.plan.splits == 1) {
      p.store(job, tile, g, t, m0, acc);
      continue;
    }
    // Split-K: every block of the cluster publishes its partials; block `split` finishes the tiles
    // of warps w with w % splits == split, reading the others' shared memory.
    cg::cluster_group cluster = cg::this_cluster();
    float* mine = partial + warp * NT * 4 * 32 + lane;
#pragma unroll
    for (int h = 0; h < NT; ++h)
#pragma unroll
      for (int i = 0; i < 4; ++i) mine[(h * 4 + i) * 32] = acc[h][i];
    cluster.sync();
    if (warp % p.plan.splits == split) {
      for (int r = 0; r < p.plan.splits; ++r) {
        if (r == split) continue;
        const float* other = cluster.map_shared_rank(mine, r);
#pragma unroll
        for (int h = 0; h < NT; ++h)
#pragma unroll
          for (int i = 0; i < 4; ++i) acc[h][i] += other[(h * 4 + i) * 32];
      }
      p.store(job, tile, g, t, m0, acc);
    }
    cluster.sync();  // keep this block's partials alive until the others have read them
  }
}

// Raises the kernel's dynamic shared-memory limit (and allows clusters of 16) once per device.
template <class P>
void prepare_kernel() {
  allow_dynamic_smem<tile_kernel<P>>(int(kSmemBudget), [](auto kernel) {
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  });
}

// Launch attributes live in `attrs` (2 slots): the cluster when splits > 1, PDL when asked.
template <class P>
cudaLaunchConfig_t launch_config(unsigned blocks, int splits, size_t smem, bool pdl, cudaLaunchAttribute* attrs) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(blocks);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.attrs = attrs;
  if (splits > 1) {
    cudaLaunchAttribute& a = attrs[cfg.numAttrs++];
    a.id = cudaLaunchAttributeClusterDimension;
    a.val.clusterDim.x = unsigned(splits);
    a.val.clusterDim.y = 1;
    a.val.clusterDim.z = 1;
  }
  if (pdl && pdl_enabled()) {
    cudaLaunchAttribute& a = attrs[cfg.numAttrs++];
    a.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    a.val.programmaticStreamSerializationAllowed = 1;
  }
  return cfg;
}

// Blocks of tile_kernel<P> the GPU holds at once with clusters of `splits` (0: cannot launch).
// Cached: the occupancy calculator is too slow for every decode call.
template <class P>
int64_t resident_blocks(int splits, size_t smem) {
  static std::mutex mu;
  static std::map<std::tuple<int, int, size_t>, int64_t> cache;
  const auto key = std::make_tuple(current_device(), splits, smem);
  std::lock_guard<std::mutex> lock(mu);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  int n = 0;
  if (splits == 1) {
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, tile_kernel<P>, kThreads, smem));
    n *= gpu_info().sm_count;
  } else {
    cudaLaunchAttribute attrs[2];
    const cudaLaunchConfig_t cfg = launch_config<P>(unsigned(splits * 64), splits, smem, false, attrs);
    if (cudaOccupancyMaxActiveClusters(&n, tile_kernel<P>, &cfg) != cudaSuccess) {
      (void)cudaGetLastError();  // this cluster size is not possible: never chosen
      n = 0;
    }
    n *= splits;
  }
  return cache[key] = n;
}

// Chooses how `jobs` jobs over K = k with `rows` staged token rows split K. A kernel this short is
// decided by waves: among the splits whose blocks fit, the one with the fewest whole waves of
// resident blocks per unit of work wins (ties: fewer splits, less reduction). Measured on H100
// (bench-gemv): splitting jobs that already need more than one wave into many waves of clusters
// is slower (MoE gate/up T=1 Mixtral 137 us vs 94 unsplit), and so was the finer split the wave
// model alone took for Qwen3 qkv 2048->5120 (slices under 8 steps, 18 us vs 10 with 8-step
// slices): splits leave >= 8 steps (512 k) per slice.
// Slices are whole 64-k steps; shared memory holds round_up(slice, kSuperK) of x per chunk.
template <class P>
Plan make_plan(int64_t jobs, int64_t k, int rows, const DecodeTuning& tuning) {
  constexpr int NT = P::kNTiles;
  prepare_kernel<P>();
  const size_t partial_bytes = size_t(kWarps) * NT * 4 * 32 * sizeof(float);
  const int64_t chunk_max =
      std::max<int64_t>(kSuperK, int64_t((kSmemBudget - partial_bytes) / (2 * size_t(rows))) - kXPad) / kSuperK * kSuperK;
  const int64_t steps = (k + kStepK - 1) / kStepK;
  const auto plan_for = [&](int64_t splits) {
    Plan plan;
    plan.slice_k = (steps + splits - 1) / splits * kStepK;
    plan.splits = int((k + plan.slice_k - 1) / plan.slice_k);
    plan.chunk_k = std::min((plan.slice_k + kSuperK - 1) / kSuperK * kSuperK, chunk_max);
    plan.x_stride = int(plan.chunk_k) + kXPad;
    plan.x_bytes = (size_t(rows) * plan.x_stride * 2 + 15) / 16 * 16;
    plan.smem_bytes = plan.x_bytes + partial_bytes;
    const bool one_wave = jobs * plan.splits <= resident_blocks<P>(plan.splits, plan.smem_bytes);
    // PDL pays where blocks have loads to issue before the wait, or all fit at once. Measured on
    // H100 (bench-gemv), MoE decode without PDL: Mixtral T=1 (several waves) 146.8 vs 157.3 us
    // with; Qwen3-30B-A3B T=1 (one wave) 25.5 vs 25.2 us.
    plan.pdl = tuning.programmatic_launch && ((P::kJobsBeforeWait && !P::kRouted) || one_wave);
    plan.rolling = one_wave;
    return plan;
  };
  if (tuning.splits > 0) {  // forced (tests, benchmarks); K shorter than `splits` steps takes fewer
    MXMOE_CHECK(tuning.splits <= kMaxSplit, "w8a16: split-K ", tuning.splits, " is above ", kMaxSplit);
    const Plan plan = plan_for(tuning.splits);
    MXMOE_CHECK(resident_blocks<P>(plan.splits, plan.smem_bytes) >= plan.splits, "w8a16: a cluster of ", plan.splits,
                " blocks with ", plan.smem_bytes, " bytes of shared memory does not fit the GPU");
    return plan;
  }
  // Splits that keep a slice in one shared-memory chunk (more only loop over chunks).
  const int64_t need = std::min<int64_t>(kMaxSplit, (k + chunk_max - 1) / chunk_max);
  Plan best = plan_for(need);
  // More than one wave anyway: at most 2 splits, the slices looping over chunks. Measured on H100
  // (bench-gemv, one run): MoE down Mixtral T=8 (K = 14336) in 6 one-chunk slices (~6 waves)
  // 212.8 us, 2 splits 180.3 us, unsplit 221.2 us.
  if (jobs * need > resident_blocks<P>(best.splits, best.smem_bytes)) return need > 2 ? plan_for(2) : best;
  // No slices under 8 steps: MoE down Qwen3-30B-A3B T=1 (K = 768, 12 steps) 7.9 us unsplit, 8.7 us
  // in 2 slices of 6 steps (bench-gemv, H100).
  constexpr int64_t min_steps = 8;
  double best_cost = 1e30;
  for (int64_t s = need; s <= kMaxSplit; ++s) {
    const Plan plan = plan_for(s);
    if (plan.splits != s) continue;  // K too short for s slices of whole steps
    if (s > need && plan.slice_k / kStepK < min_steps) break;
    const int64_t resident = resident_blocks<P>(plan.splits, plan.smem_bytes);
    if (resident < plan.splits) continue;
    const double cost = double((jobs * s + resident - 1) / resident) / double(s);
    if (cost < best_cost * 0.999) {
      best_cost = cost;
      best = plan;
    }
  }
  return best;
}

// Launches tile_kernel<P> over jobs × p.plan.splits blocks, clusters of p.plan.splits.
template <class P>
void launch(const P& p, int64_t jobs, cudaStream_t stream) {
  if (jobs <= 0) return;
  MXMOE_CHECK(jobs * p.plan.splits < (int64_t(1) << 31), "w8a16: too many blocks (", jobs, " jobs)");
  cudaLaunchAttribute attrs[2];
  cudaLaunchConfig_t cfg =
      launch_config<P>(unsigned(jobs * p.plan.splits), p.plan.splits, p.plan.smem_bytes, p.plan.pdl, attrs);
  cfg.stream = stream;
  CUDA_CHECK(cudaLaunchKernelEx(&cfg, tile_kernel<P>, p));
}

}  // namespace mxmoe::w8a16
