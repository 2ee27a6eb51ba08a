// Decode-size fused-MoE expert kernels on the tile machinery of kernels/w8a16_dot.cuh. A job is
// (active-expert slot, tile group): the grid is sized for the most experts T·k pairs can touch and
// the slots past the active experts (read on the device: no host sync, graph-capturable) return at
// once. The experts come from the permutation, or (one token, TokenRouting) from the router logits.
// Each expert's tiles are read once for all its pairs (up to 16 per pass; more loop).
//   gate/up: a 16-row tile is 8 gate rows and the 8 matching up rows, so SiLU(gate)·up is formed in
//            the accumulators; act [T·k, I] bf16.
//   down:    16 rows of W2_e; y [T·k, H] f32 per pair.
// One token with MXFP8 experts runs both in one launch (token_experts_kernel, below).
#include "kernels/moe_decode.h"

#include <tuple>
#include <type_traits>

#include "kernels/moe_routing.cuh"
#include "kernels/moe_routing.h"
#include "kernels/w8a16_dot.cuh"
#include "kernels/w8a16_gemm_tma.cuh"

namespace mxmoe {

namespace {

using namespace w8a16;

// Routing state shared by both problems. Read through L2 (__ldcg): the down kernel reads it before
// its PDL wait, while the gate/up kernel may still run; the routing kernel that wrote it has
// finished by then (see Down), but this SM's L1 may hold a previous call's lines.
struct Routing {
  const int* offsets;  // [E + 1]
  const int* pairs;    // [T·k]
  const int* active;   // [E], -1 past the active experts
  int groups;          // tile groups per expert

  __device__ const int* route() const { return nullptr; }
  template <class W>
  __device__ bool job(int index, const W& all, int64_t rows_per_expert, Job<W>& j, const int*) const {
    // active[slot] is -1 past num_active: one dependent load less than reading num_active first,
    // on the gate/up kernel's path from its wait to its first weight load.
    const int e = __ldcg(active + index / groups);
    if (e < 0) return false;
    j.w = all.offset(int64_t(e) * rows_per_expert);
    j.group = index % groups;
    j.first = __ldcg(offsets + e);
    j.tokens = __ldcg(offsets + e + 1) - j.first;
    return true;
  }
  template <class W>
  __device__ int pair(const Job<W>& j, int m) const {
    return __ldcg(pairs + j.first + m);
  }
};

// One token, no permutation (MoeTokenRoute): each block finds the token's top-k experts itself
// from the router logits (rank_of: the routing's order and ties), slot s holding pair s. The
// routing kernel's serial tail (its last block ranking, counting, scanning and placing) is gone
// from the chain; a block spends one L2 read of the logits and a rank per thread instead.
struct TokenRouting {
  const float* logits;  // [E], written two or more kernels back (read through L2)
  int n_experts, top_k;
  bool renormalize;
  int groups;            // tile groups per expert
  int32_t* ids;          // [top_k] or nullptr: block 0 writes the slots' experts and weights (for the combine)
  float* weights;

  __device__ const int* route() const {
    __shared__ float l[kMoeMaxExperts];
    __shared__ int routed[kMoeMaxTopK];
    for (int e = threadIdx.x; e < n_experts; e += blockDim.x) l[e] = __ldcg(logits + e);
    __syncthreads();
    for (int e = threadIdx.x; e < n_experts; e += blockDim.x) {
      const int rank = moe_detail::rank_of(l, n_experts, e);
      if (rank < top_k) routed[rank] = e;
    }
    __syncthreads();
    if (ids && blockIdx.x == 0 && threadIdx.x < 32) {
      const int lane = threadIdx.x;
      moe_detail::write_slots(l, moe_detail::softmax_stats(l, n_experts), lane < top_k ? routed[lane] : 0, top_k,
                              renormalize, ids, weights);
    }
    return routed;
  }
  template <class W>
  __device__ bool job(int index, const W& all, int64_t rows_per_expert, Job<W>& j, const int* routed) const {
    const int slot = index / groups;
    if (slot >= top_k) return false;
    j.w = all.offset(int64_t(routed[slot]) * rows_per_expert);
    j.group = index % groups;
    j.first = slot;
    j.tokens = 1;
    return true;
  }
  template <class W>
  __device__ int pair(const Job<W>& j, int m) const {
    return j.first + m;
  }
};

template <class W, int NT, class R>
struct GateUp {
  using Weights = W;
  static constexpr int kNTiles = NT;
  static constexpr bool kJobsBeforeWait = false;  // the routing is the previous kernel's output
  static constexpr bool kRouted = true;
  Plan plan;
  int64_t k;                 // H
  R routing;
  W w13;                     // [E, 2I, H]
  const __nv_bfloat16* x;    // [T, H]
  __nv_bfloat16* act;        // [T·k, I]
  int64_t inter;             // I
  int top_k;

  __device__ const int* route() const { return routing.route(); }
  __device__ bool job(int index, Job<W>& j, const int* routed) const {
    return routing.job(index, w13, 2 * inter, j, routed);
  }
  __device__ int64_t row(const Job<W>&, int tile, int r) const {
    const int64_t n = int64_t(tile) * 8 + (r & 7);
    return n >= inter ? -1 : (r < 8 ? n : inter + n);
  }
  __device__ const __nv_bfloat16* x_row(const Job<W>& j, int m) const {
    return x + int64_t(routing.pair(j, m) / top_k) * k;
  }
  __device__ void store(const Job<W>& j, int tile, int g, int t, int m0, const float (&acc)[NT][4]) const {
    const int64_t n = int64_t(tile) * 8 + g;
    if (n >= inter) return;
#pragma unroll
    for (int h = 0; h < NT; ++h)
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int m = m0 + h * 8 + 2 * t + i;
        if (m < j.tokens) act[int64_t(routing.pair(j, m)) * inter + n] = __float2bfloat16(silu(acc[h][i]) * acc[h][2 + i]);
      }
  }
};

template <class W, int NT, class R>
struct Down {
  using Weights = W;
  static constexpr int kNTiles = NT;
  // The routing comes from two kernels back (routing -> gate/up -> down): once this kernel runs at
  // all, gate/up has passed its own PDL wait for the routing kernel, so the experts' first weights
  // load before this kernel's wait (for gate/up's act). Only act is gate/up's output.
  static constexpr bool kJobsBeforeWait = true;
  static constexpr bool kRouted = true;  // PDL only for one-wave grids (see make_plan)
  Plan plan;
  int64_t k;                  // I
  R routing;
  W w2;                       // [E, H, I]
  const __nv_bfloat16* act;   // [T·k, I]
  float* y;                   // [T·k, H]
  int64_t hidden;             // H

  __device__ const int* route() const { return routing.route(); }
  __device__ bool job(int index, Job<W>& j, const int* routed) const {
    return routing.job(index, w2, hidden, j, routed);
  }
  __device__ int64_t row(const Job<W>&, int tile, int r) const {
    const int64_t n = int64_t(tile) * kTileRows + r;
    return n < hidden ? n : -1;
  }
  __device__ const __nv_bfloat16* x_row(const Job<W>& j, int m) const {
    return act + int64_t(routing.pair(j, m)) * k;
  }
  __device__ void store(const Job<W>& j, int tile, int g, int t, int m0, const float (&acc)[NT][4]) const {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t n = row(j, tile, g + 8 * half);
      if (n < 0) continue;
#pragma unroll
      for (int h = 0; h < NT; ++h)
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const int m = m0 + h * 8 + 2 * t + i;
          if (m < j.tokens) y[int64_t(routing.pair(j, m)) * hidden + n] = acc[h][2 * half + i];
        }
    }
  }
};

// ---- One token, both expert GEMMs in one launch (MXFP8) ----
// With two kernels, down's weights could not start streaming before gate/up's blocks left (they do
// not all fit beside them), and there was a kernel boundary between them. Here one block per SM
// routes the token and then:
//  1. gate/up: block "column" c takes unit (slot, 8-row tile) w·G + c in warp w (G = the grid), so
//     every SM takes a share; a warp computes its 8 gate + 8 up rows over all of H (kTokenDepth
//     steps in flight per lane, through a cp.async ring in the bytes that W2 takes later), writes
//     SiLU(gate)·up to act[s] and counts the tile in ready[s];
//  2. down: a block takes 128 rows of W2_e for a slot and bulk-copies them into shared memory once
//     its warps are done with their rings (issued before step 1 instead, they slowed the gate/up
//     weight stream more than they saved: Qwen3-30B-A3B 3.000 vs 2.957 ms/step, .ci/device-ab-code);
//     it waits until the slot's tiles are all counted, stages act[s] and multiplies the rows into y[s].
// Blocks claim columns and down units from counters rather than by blockIdx, and wait only after
// every column has been claimed by a running block: so the launch finishes on whatever part of the
// grid is resident (another stream's kernels, or a second engine's launch, may hold SMs), instead
// of waiting on blocks that cannot start. With the whole grid resident, each block takes one column
// and one down unit. Every count is back at zero when the launch ends: each block's last claim of
// either kind fails, so a launch makes exactly G + columns and G + down units claims, and the block
// that makes the last one zeroes the counter; each slot's last reader zeroes its tile count.
constexpr int kTokenDownRows = kWarps * kTileRows;  // W2 rows per down block
constexpr int kTokenDepth = 8;                      // gate/up steps in flight per lane (a round)
// Per warp, the gate/up ring: kTokenDepth stages of each lane's two 16-byte chunks, and two rounds
// of each lane's [2 rows][kTokenDepth / 2] scale words.
constexpr int kRingBytes = kWarps * kTokenDepth * 2 * 32 * 16, kScaleRingBytes = kWarps * 2 * 2 * 32 * 16;

struct TokenExperts {
  TokenRouting routing;    // block 0 writes the slots' ids and weights
  Fp8Rows w13, w2;         // [E·2I, H], [E·H, I]
  const __nv_bfloat16* x;  // [H]
  __nv_bfloat16* act;      // [k, I]
  float* y;                // [k, H]
  unsigned* ready;         // [k] gate/up tiles done per slot
  unsigned* passed;        // [k] down units past their wait per slot
  unsigned* claims;        // [2] gate/up columns claimed, down units claimed
  int hidden, inter;
  int w2_stride;                            // shared bytes per W2 row: I padded to 64 mod 128 (conflict-free LDS.128)
  // Shared-memory layout: the W2 rows first, the gate/up rings in the same bytes (they are done
  // before the first W2 copy), then the rest.
  int scales_at, x_at, act_at, bar_at, smem_bytes;

  TokenExperts(int64_t h, int64_t i) : hidden(int(h)), inter(int(i)) {
    const auto round16 = [](int64_t b) { return int((b + 15) / 16 * 16); };
    w2_stride = int(i + (64 - i % 128 + 128) % 128);
    scales_at = std::max(kTokenDownRows * w2_stride, kRingBytes + kScaleRingBytes);
    x_at = scales_at + round16(kTokenDownRows * i / kMxBlock);
    act_at = x_at + round16(2 * h);
    bar_at = act_at + round16(2 * i);
    smem_bytes = bar_at + 8;
  }
};

#if defined(MXMOE_HAS_WGMMA)
__device__ __forceinline__ unsigned load_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}
#endif

__global__ void __launch_bounds__(kThreads, 1) token_experts_kernel(const TokenExperts p) {
#if defined(MXMOE_HAS_WGMMA)
  extern __shared__ __align__(128) unsigned char smem[];
  uint8_t* const w2s = smem;  // [128][w2_stride] e4m3
  uint8_t* const w2_scales = smem + p.scales_at;  // [128][I/32] e8m0
  auto* const xs = reinterpret_cast<__nv_bfloat16*>(smem + p.x_at);  // [H], groups of 4 interleaved
  auto* const as = reinterpret_cast<__nv_bfloat16*>(smem + p.act_at);  // [I], the same
  auto* const bar = reinterpret_cast<uint64_t*>(smem + p.bar_at);
  __shared__ int claimed[2];  // this block's current gate/up column and down unit
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int hidden = p.hidden, inter = p.inter, top_k = p.routing.top_k, row_scales = inter / kMxBlock;
  const int w13_row_scales = hidden / kMxBlock;
  const int columns = int(gridDim.x), tiles = (inter + 7) / 8;
  const int blocks_per_slot = hidden / kTokenDownRows, down_units = top_k * blocks_per_slot;

  if (threadIdx.x == 0) {  // (its fence waits for this thread's earlier memory operations: none yet)
    mbar_init(bar, 1);
    mbar_fence_init();
  }
  grid_dependency_wait();  // the router logits and x
  // Thread 0 claims (claim), and where it reads the result (settle) the launch's last claim zeroes
  // its counter for the next launch; in between, the claim's round trip overlaps other work.
  const auto claim = [&](int which) { return int(atomicAdd(p.claims + which, 1u)); };
  const int column_claims = 2 * columns, unit_claims = columns + down_units;
  const auto settle = [&](int which, int v) {
    if (v == (which == 0 ? column_claims : unit_claims) - 1) p.claims[which] = 0;
    return v;
  };
  // The first claims fly while the block routes (their results are read after route()'s barriers).
  int column = 0, unit = 0;
  if (threadIdx.x == 0) {
    column = claim(0);
    unit = claim(1);
  }
  const int* routed = p.routing.route();
  for (int v = threadIdx.x; v < hidden / 8; v += kThreads)
    reinterpret_cast<uint4*>(xs)[v] = interleaved(reinterpret_cast<const uint4*>(p.x)[v]);
  if (threadIdx.x == 0) {
    claimed[0] = settle(0, column);
    claimed[1] = settle(1, unit);
  }
  __syncthreads();
  // Warp 0: W2 rows of down unit d (slot, 128 rows) -> shared memory, completing on `bar`.
  const auto copy_w2 = [&](int d) {
    const int slot = d / blocks_per_slot, n0 = d % blocks_per_slot * kTokenDownRows;
    const Fp8Rows w = p.w2.offset(int64_t(routed[slot]) * hidden + n0);
    if (lane == 0) {
      mbar_arrive_expect_tx(bar, uint32_t(kTokenDownRows * (inter + row_scales)));
      bulk_load(w2_scales, w.scales, uint32_t(kTokenDownRows * row_scales), bar);
    }
    __syncwarp();
    for (int r = lane; r < kTokenDownRows; r += 32)
      bulk_load(w2s + r * p.w2_stride, w.elems + int64_t(r) * inter, uint32_t(inter), bar);
  };
  constexpr int kRoundWords = kTokenDepth / 2;  // scale words per row and round
  static_assert(kRoundWords == 4, "a lane's scale words of a row and round are one 16-byte slot");
  uint4* const ring = reinterpret_cast<uint4*>(smem) + warp * kTokenDepth * 64 + lane;  // stage i, row r: [(2i + r)·32]
  uint4* const scale_ring = reinterpret_cast<uint4*>(smem + kRingBytes) + warp * 128 + lane;  // slot q, row r: [(2q + r)·32]
  const uint32_t ring_addr = smem_addr(ring), scale_ring_addr = smem_addr(scale_ring);
  const int steps = hidden / kStepK;

  // 1.
  for (column = claimed[0]; column < columns;) {
    if (threadIdx.x == 0) column = claim(0);  // the next column, read after this one
    for (int u = warp * columns + claimed[0]; u < top_k * tiles; u += kWarps * columns) {
      const int s = u / tiles, n = u % tiles * 8 + g;  // n < I: I is a multiple of 32
      const int64_t gate = int64_t(routed[s]) * 2 * inter + n;  // W13 rows gate and gate + I (up)
      const uint8_t* const elems[2] = {p.w13.elems + gate * hidden + t * kLaneK,
                                       p.w13.elems + (gate + inter) * hidden + t * kLaneK};
      const uint32_t* const scales[2] = {reinterpret_cast<const uint32_t*>(p.w13.scales + gate * w13_row_scales),
                                         reinterpret_cast<const uint32_t*>(p.w13.scales + (gate + inter) * w13_row_scales)};
      // Step i reads lane t's 16 bytes at 64 i + 16 t of both rows into ring stage i mod
      // kTokenDepth, by cp.async: its groups complete in order, so a lane waits for step i alone
      // while the next kTokenDepth - 1 stay in flight (register loads all wait on one scoreboard:
      // each round of steps waited for the whole round). A round's first step also brings the
      // round's scale bytes (word j: k from 128 j on; H is a multiple of 128) into scale slot
      // round mod 2.
      const auto issue = [&](int step) {
        if (step < steps) {
          if (step % kTokenDepth == 0) {
            const int k0 = step * kStepK;
            uint32_t* const slot = reinterpret_cast<uint32_t*>(scale_ring + (step / kTokenDepth % 2) * 64);
#pragma unroll
            for (int r = 0; r < 2; ++r)
#pragma unroll
              for (int j = 0; j < kRoundWords; ++j) {
                const bool in = k0 + j * 128 < hidden;
                cp_async4(slot + r * 128 + j, scales[r] + (in ? k0 / 128 + j : 0), in);
              }
          }
#pragma unroll
          for (int r = 0; r < 2; ++r)
            cp_async16(ring + (step % kTokenDepth * 2 + r) * 32, elems[r] + step * kStepK, true);
        }
        cp_async_commit();  // (empty past the end: the wait counts groups)
      };
#pragma unroll
      for (int i = 0; i < kTokenDepth; ++i) issue(i);
      float acc[1][4] = {};
      // Each step converts its chunks, refills their stage and multiplies; the scale choice (fast
      // unless a byte of the round has its top bit set) is made once per round for the whole warp.
      const auto round = [&](int first, const uint32_t (&sc)[2][kRoundWords], auto wide) {
#pragma unroll
        for (int i = 0; i < kTokenDepth; ++i) {
          if (first + i >= steps) break;
          if (i > 0) cp_async_wait<kTokenDepth - 1>();
          uint32_t a[2][8];
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            Fp8Rows::unscaled(ld_shared_16(ring_addr + (i * 2 + r) * 512), a[r]);
            Fp8Rows::scale<decltype(wide)::value>(a[r], scale_byte(sc[r][i / 2], 2 * (i & 1) + t / 2));
          }
          issue(first + i + kTokenDepth);
          mma_chunk<1>(a[0], a[1], xs, 0, (first + i) * kStepK + t * kLaneK, 1, g, acc);
        }
      };
      for (int first = 0; first < steps; first += kTokenDepth) {
        cp_async_wait<kTokenDepth - 1>();  // the round's first step and its scales
        const uint32_t slot = scale_ring_addr + (first / kTokenDepth % 2) * 1024;
        uint32_t sc[2][kRoundWords], top = 0;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const uint4 v = ld_shared_16(slot + r * 512);
          sc[r][0] = v.x, sc[r][1] = v.y, sc[r][2] = v.z, sc[r][3] = v.w;
          top |= v.x | v.y | v.z | v.w;
        }
        if (warp_needs_wide(top)) round(first, sc, std::true_type{});
        else round(first, sc, std::false_type{});
      }
      if (t == 0) p.act[int64_t(s) * inter + n] = __float2bfloat16(silu(acc[0][0]) * acc[0][2]);
      __threadfence();  // the act row before its count, which other blocks acquire
      __syncwarp();
      if (lane == 0) atomicAdd(p.ready + s, 1u);
    }
    fence_proxy_async();  // the ring's cp.async writes before the W2 bulk copies over them
    __syncthreads();  // every warp has read claimed[0] and is done with its ring
    if (threadIdx.x == 0) claimed[0] = settle(0, column);
    __syncthreads();
    column = claimed[0];
  }

  // 2. Every column is claimed by a running block by now, so the waits below end.
  for (uint32_t phase = 0; claimed[1] < down_units; phase ^= 1) {
    const int slot = claimed[1] / blocks_per_slot, n0 = claimed[1] % blocks_per_slot * kTokenDownRows;
    if (threadIdx.x == 0) unit = claim(1);  // the next unit, read after this one
    if (warp == 0) copy_w2(claimed[1]);
    if (threadIdx.x == 0) spin_until([&] { return load_acquire(p.ready + slot) >= unsigned(tiles); });
    __syncthreads();
    launch_dependents();  // (every block has passed a wait or will exit without one)
    // The slot's last reader zeroes its counts (the result is read at the end of the unit).
    const unsigned readers = threadIdx.x == 0 ? atomicAdd(p.passed + slot, 1u) : 0u;
    const uint4* act = reinterpret_cast<const uint4*>(p.act + int64_t(slot) * inter);
    for (int v = threadIdx.x; v < inter / 8; v += kThreads)
      reinterpret_cast<uint4*>(as)[v] = interleaved(__ldcg(act + v));
    __syncthreads();
    mbar_wait(bar, phase);
    const int rr = warp * kTileRows + g;  // this lane's rows rr and rr + 8 of the unit's 128
    const uint32_t rows[2] = {smem_addr(w2s + rr * p.w2_stride), smem_addr(w2s + (rr + 8) * p.w2_stride)};
    const uint32_t row_scale_bytes[2] = {smem_addr(w2_scales + rr * row_scales),
                                         smem_addr(w2_scales + (rr + 8) * row_scales)};
    // Two accumulator sets, even and odd steps, so that consecutive steps' mmas need not wait on
    // each other (the rows are in shared memory, so the mmas set the pace); the dequant (fast or
    // wide) is chosen once for the warp's 16 rows.
    float acc[2][1][4] = {};
    const auto step = [&](int k0, auto wide, float (&sum)[1][4]) {
      const int kk = k0 + t * kLaneK;
      const bool in = kk < inter;
      uint32_t a[2][8];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        Fp8Rows::unscaled(in ? ld_shared_16(rows[r] + kk) : make_uint4(0, 0, 0, 0), a[r]);
        Fp8Rows::scale<decltype(wide)::value>(a[r], in ? ld_shared_u8(row_scale_bytes[r] + kk / kMxBlock) : 0u);
      }
      mma_chunk<1>(a[0], a[1], as, 0, kk, in ? 1 : 0, g, sum);
    };
    const auto multiply = [&](auto wide) {
      for (int k0 = 0; k0 < inter; k0 += 2 * kStepK) {
        step(k0, wide, acc[0]);
        step(k0 + kStepK, wide, acc[1]);
      }
    };
    uint32_t top = 0;  // the warp's 16 rows of scale bytes (contiguous, 16·I/32 of them: whole words) OR-ed
    const uint32_t warp_scales = smem_addr(w2_scales + warp * kTileRows * row_scales);
    for (int w = lane; w < kTileRows * row_scales / 4; w += 32) top |= ld_shared_u32(warp_scales + 4 * w);
    if (warp_needs_wide(top)) multiply(std::true_type{});
    else multiply(std::false_type{});
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[0][0][i] += acc[1][0][i];
    if (t == 0) {
      float* y = p.y + int64_t(slot) * hidden + n0 + rr;
      y[0] = acc[0][0][0];
      y[8] = acc[0][0][2];
    }
    if (threadIdx.x == 0 && readers == unsigned(blocks_per_slot - 1)) {
      p.passed[slot] = 0;
      p.ready[slot] = 0;
    }
    __syncthreads();  // the rows and act are read before the next unit's copies
    if (threadIdx.x == 0) claimed[1] = settle(1, unit);
    __syncthreads();
  }
#else
  __trap();  // bulk copies and mbarriers: the host runs this kernel on sm_90 only
#endif
}

void check_cuda_contiguous(const Tensor& t, const char* op, const char* name) {
  MXMOE_CHECK(t.device() == Device::cuda && t.is_contiguous(), op, ": ", name, " must be a contiguous CUDA tensor");
}

// Checks the permutation against E experts and `pairs` = T·k pairs.
void check_perm(const MoePermutation& perm, int64_t experts, int64_t pairs, const char* op) {
  const auto ok = [&](const Tensor& t, int64_t n, const char* name) {
    MXMOE_CHECK(t.dtype() == DType::i32 && t.shape() == Shape({n}), op, ": ", name, " must be i32 [", n, "], got ",
                dtype_name(t.dtype()), " ", shape_str(t.shape()));
    check_cuda_contiguous(t, op, name);
  };
  ok(perm.expert_offsets, experts + 1, "expert_offsets");
  ok(perm.sorted_pairs, pairs, "sorted_pairs");
  ok(perm.active_experts, experts, "active_experts");
  ok(perm.num_active, 1, "num_active");
}

Routing routing(const MoePermutation& perm) {  // groups: set by the launch
  return {perm.expert_offsets.data_as<const int>(), perm.sorted_pairs.data_as<const int>(),
          perm.active_experts.data_as<const int>(), 0};
}

// Weight-format views of an expert stack [E, rows, K].
Fp8Rows rows_of(const MxTensor& w) {
  return {w.elems.data_as<const uint8_t>(), w.scales.data_as<const uint8_t>(), w.elems.size(2)};
}
Bf16Rows rows_of(const Tensor& w) { return {w.data_as<const __nv_bfloat16>(), w.size(2)}; }

void check_weights(const MxTensor& w, const char* op, const char* name) {
  MXMOE_CHECK(w.elems.dim() == 3 && w.elems.dtype() == DType::e4m3 && w.scales.dtype() == DType::e8m0 &&
                  w.scales.shape() == Shape({w.elems.size(0), w.elems.size(1), w.elems.size(2) / kMxBlock}),
              op, ": ", name, " must be MXFP8 [E, N, K] with scales [E, N, K/32], got ", shape_str(w.elems.shape()),
              " and ", shape_str(w.scales.shape()));
  MXMOE_CHECK(w.elems.size(2) > 0 && w.elems.size(2) % kMxBlock == 0, op, ": ", name, " K = ", w.elems.size(2),
              " is not a positive multiple of ", kMxBlock);
  check_cuda_contiguous(w.elems, op, name);
  check_cuda_contiguous(w.scales, op, name);
}
void check_weights(const Tensor& w, const char* op, const char* name) {
  MXMOE_CHECK(w.dim() == 3 && w.dtype() == DType::bf16, op, ": ", name, " must be bf16 [E, N, K], got ",
              dtype_name(w.dtype()), " ", shape_str(w.shape()));
  MXMOE_CHECK(w.size(2) > 0 && w.size(2) % kMxBlock == 0, op, ": ", name, " K = ", w.size(2),
              " is not a positive multiple of ", kMxBlock);
  check_cuda_contiguous(w, op, name);
}
const Shape& shape_of(const MxTensor& w) { return w.elems.shape(); }
const Shape& shape_of(const Tensor& w) { return w.shape(); }

// 8-token mma tiles per pass over an expert's weights: room for the pairs an expert usually gets
// (an expert with more loops, reading its weights again), no more (each tile costs mma work,
// staging and registers: the Fp8Rows four-tile kernels spill 20 bytes). `tokens` bounds the pairs
// of one expert (distinct top-k): up to 8 one tile; up to 16, or at most 8 pairs per expert on
// average, two; else four. Measured on H100 (bench-moe, fused_moe decode path, four tiles vs
// two in two runs): 16 pairs per expert Mixtral-8x7B 800 vs 1008 us, Qwen3-30B-A3B 397 vs 446;
// 8 per expert Mixtral 714 vs 640, Qwen3 398 vs 341.
int token_tiles(int64_t tokens, int64_t pairs, int64_t experts) {
  if (tokens <= 8) return 1;
  return tokens <= 16 || pairs <= 8 * experts ? 2 : 4;
}

// One job per (expert slot, tile group), for as many slots as the pairs can fill.
int64_t jobs_for(int64_t experts, int64_t pairs, int64_t tiles) {
  return std::min(experts, pairs) * ((tiles + kWarps - 1) / kWarps);
}

template <int NT, class R, class WT>
void gate_up(const Tensor& x, const WT& w13, R routing, int top_k, const Tensor& act, cudaStream_t stream,
             const DecodeTuning& tuning) {
  using W = decltype(rows_of(w13));
  const int64_t experts = shape_of(w13)[0], inter = shape_of(w13)[1] / 2, hidden = x.size(1), pairs = act.size(0);
  const int64_t tiles = (inter + 7) / 8;
  routing.groups = int((tiles + kWarps - 1) / kWarps);
  GateUp<W, NT, R> p;
  p.k = hidden;
  p.routing = routing;
  p.w13 = rows_of(w13);
  p.x = x.data_as<const __nv_bfloat16>();
  p.act = act.data_as<__nv_bfloat16>();
  p.inter = inter;
  p.top_k = top_k;
  const int64_t jobs = jobs_for(experts, pairs, tiles);
  p.plan = make_plan<decltype(p)>(jobs, hidden, NT * 8, tuning);
  launch(p, jobs, stream);
}

template <int NT, class R, class WT>
void down(const Tensor& act, const WT& w2, R routing, const Tensor& y, cudaStream_t stream,
          const DecodeTuning& tuning) {
  using W = decltype(rows_of(w2));
  const int64_t experts = shape_of(w2)[0], hidden = shape_of(w2)[1], inter = act.size(1), pairs = act.size(0);
  const int64_t tiles = (hidden + kTileRows - 1) / kTileRows;
  routing.groups = int((tiles + kWarps - 1) / kWarps);
  Down<W, NT, R> p;
  p.k = inter;
  p.routing = routing;
  p.w2 = rows_of(w2);
  p.act = act.data_as<const __nv_bfloat16>();
  p.y = y.data_as<float>();
  p.hidden = hidden;
  const int64_t jobs = jobs_for(experts, pairs, tiles);
  p.plan = make_plan<decltype(p)>(jobs, inter, NT * 8, tuning);
  launch(p, jobs, stream);
}

// The shapes every gate/up call checks; returns the pairs T·k.
template <class WT>
int64_t check_gate_up(const Tensor& x, const WT& w13, int top_k, const Tensor& act, const char* op) {
  check_weights(w13, op, "w13");
  const Shape& ws = shape_of(w13);
  MXMOE_CHECK(ws[1] % 2 == 0, op, ": w13 ", shape_str(ws), " must have 2·I rows (gate, then up)");
  MXMOE_CHECK(top_k >= 1, op, ": top_k = ", top_k);
  MXMOE_CHECK(x.dim() == 2 && x.dtype() == DType::bf16 && x.size(1) == ws[2], op, ": x must be bf16 [T, ", ws[2],
              "], got ", dtype_name(x.dtype()), " ", shape_str(x.shape()));
  const int64_t pairs = x.size(0) * top_k;
  MXMOE_CHECK(act.dtype() == DType::bf16 && act.shape() == Shape({pairs, ws[1] / 2}), op, ": act must be bf16 [",
              pairs, ", ", ws[1] / 2, "], got ", dtype_name(act.dtype()), " ", shape_str(act.shape()));
  check_cuda_contiguous(x, op, "x");
  check_cuda_contiguous(act, op, "act");
  return pairs;
}

// The shapes every down call checks; returns the pairs.
template <class WT>
int64_t check_down(const Tensor& act, const WT& w2, const Tensor& y, const char* op) {
  check_weights(w2, op, "w2");
  const Shape& ws = shape_of(w2);
  MXMOE_CHECK(act.dim() == 2 && act.dtype() == DType::bf16 && act.size(1) == ws[2], op, ": act must be bf16 [T·k, ",
              ws[2], "], got ", dtype_name(act.dtype()), " ", shape_str(act.shape()));
  const int64_t pairs = act.size(0);
  MXMOE_CHECK(y.dtype() == DType::f32 && y.shape() == Shape({pairs, ws[1]}), op, ": y must be f32 [", pairs, ", ",
              ws[1], "], got ", dtype_name(y.dtype()), " ", shape_str(y.shape()));
  check_cuda_contiguous(act, op, "act");
  check_cuda_contiguous(y, op, "y");
  return pairs;
}

template <class WT>
void gate_up_checked(const Tensor& x, const WT& w13, const MoePermutation& perm, int top_k, const Tensor& act,
                     cudaStream_t stream, const DecodeTuning& tuning) {
  constexpr const char* op = "moe_gate_up_decode";
  const int64_t pairs = check_gate_up(x, w13, top_k, act, op);
  const Shape& ws = shape_of(w13);
  check_perm(perm, ws[0], pairs, op);
  if (pairs == 0 || ws[1] == 0) return;
  const Routing r = routing(perm);
  switch (token_tiles(x.size(0), pairs, ws[0])) {
    case 1: return gate_up<1>(x, w13, r, top_k, act, stream, tuning);
    case 2: return gate_up<2>(x, w13, r, top_k, act, stream, tuning);
    default: return gate_up<4>(x, w13, r, top_k, act, stream, tuning);
  }
}

template <class WT>
void down_checked(const Tensor& act, const WT& w2, const MoePermutation& perm, const Tensor& y, cudaStream_t stream,
                  const DecodeTuning& tuning) {
  constexpr const char* op = "moe_down_decode";
  const int64_t pairs = check_down(act, w2, y, op);
  const Shape& ws = shape_of(w2);
  check_perm(perm, ws[0], pairs, op);
  if (pairs == 0 || ws[1] == 0) return;
  const Routing r = routing(perm);
  // T is not known here; the pairs per expert are at most T = pairs / k <= pairs.
  switch (token_tiles(pairs, pairs, ws[0])) {
    case 1: return down<1>(act, w2, r, y, stream, tuning);
    case 2: return down<2>(act, w2, r, y, stream, tuning);
    default: return down<4>(act, w2, r, y, stream, tuning);
  }
}

// The token route's tensors against E experts; `outputs`: the ids and weights the down kernel writes.
TokenRouting token_routing(const MoeTokenRoute& route, int64_t experts, bool outputs, const char* op) {
  const Tensor& l = route.logits;
  MXMOE_CHECK(l.device() == Device::cuda && l.is_contiguous() && l.dtype() == DType::f32 && l.shape() == Shape({1, experts}),
              op, ": router logits must be a contiguous CUDA f32 [1, ", experts, "], got ", dtype_name(l.dtype()), " ",
              shape_str(l.shape()));
  MXMOE_CHECK(route.top_k >= 1 && route.top_k <= kMoeMaxTopK && route.top_k <= experts && experts <= kMoeMaxExperts, op,
              ": top_k = ", route.top_k, " with ", experts, " experts (supported: 1..min(E, ", kMoeMaxTopK, "), E <= ",
              kMoeMaxExperts, ")");
  TokenRouting r{l.data_as<const float>(), int(experts), route.top_k, route.renormalize, 0, nullptr, nullptr};
  if (outputs) {
    for (const auto& [t, dtype, name] : {std::tuple{&route.ids, DType::i32, "ids"}, {&route.weights, DType::f32, "weights"}})
      MXMOE_CHECK(t->device() == Device::cuda && t->is_contiguous() && t->dtype() == dtype &&
                      t->numel() == route.top_k,
                  op, ": ", name, " must be a contiguous CUDA ", dtype_name(dtype), " [", route.top_k, "]");
    r.ids = route.ids.data_as<int32_t>();
    r.weights = route.weights.data_as<float>();
  }
  return r;
}

template <class WT>
void gate_up_one_token(const Tensor& x, const WT& w13, const MoeTokenRoute& route, const Tensor& act,
                       cudaStream_t stream, const DecodeTuning& tuning) {
  constexpr const char* op = "moe_gate_up_decode (one token)";
  check_gate_up(x, w13, route.top_k, act, op);
  MXMOE_CHECK(x.size(0) == 1, op, ": x has ", x.size(0), " tokens, the token route takes one");
  if (shape_of(w13)[1] == 0) return;
  gate_up<1>(x, w13, token_routing(route, shape_of(w13)[0], false, op), route.top_k, act, stream, tuning);
}

template <class WT>
void down_one_token(const Tensor& act, const WT& w2, const MoeTokenRoute& route, const Tensor& y, cudaStream_t stream,
                    const DecodeTuning& tuning) {
  constexpr const char* op = "moe_down_decode (one token)";
  const int64_t pairs = check_down(act, w2, y, op);
  MXMOE_CHECK(pairs == route.top_k, op, ": act has ", pairs, " rows, the token route has ", route.top_k, " slots");
  if (shape_of(w2)[1] == 0) return;
  down<1>(act, w2, token_routing(route, shape_of(w2)[0], true, op), y, stream, tuning);
}

// The dynamic shared memory token_experts_kernel may use (the device's limit less the routing's
// static arrays); raises the kernel's limit to it once per device.
int token_experts_smem_limit() {
  static std::mutex mu;
  static std::map<int, int> limit;
  std::lock_guard<std::mutex> lock(mu);
  const int device = current_device();
  if (auto it = limit.find(device); it != limit.end()) return it->second;
  cudaFuncAttributes attr{};
  CUDA_CHECK(cudaFuncGetAttributes(&attr, token_experts_kernel));
  const int bytes = gpu_info().max_smem_per_block - int(attr.sharedSizeBytes);
  CUDA_CHECK(cudaFuncSetAttribute(token_experts_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  return limit[device] = bytes;
}

}  // namespace

void moe_gate_up_decode(const Tensor& x, const MxTensor& w13, const MoePermutation& perm, int top_k,
                        const Tensor& act, cudaStream_t stream, const DecodeTuning& tuning) {
  gate_up_checked(x, w13, perm, top_k, act, stream, tuning);
}
void moe_gate_up_decode(const Tensor& x, const Tensor& w13, const MoePermutation& perm, int top_k, const Tensor& act,
                        cudaStream_t stream, const DecodeTuning& tuning) {
  gate_up_checked(x, w13, perm, top_k, act, stream, tuning);
}
void moe_down_decode(const Tensor& act, const MxTensor& w2, const MoePermutation& perm, const Tensor& y,
                     cudaStream_t stream, const DecodeTuning& tuning) {
  down_checked(act, w2, perm, y, stream, tuning);
}
void moe_down_decode(const Tensor& act, const Tensor& w2, const MoePermutation& perm, const Tensor& y,
                     cudaStream_t stream, const DecodeTuning& tuning) {
  down_checked(act, w2, perm, y, stream, tuning);
}

void moe_gate_up_decode(const Tensor& x, const MxTensor& w13, const MoeTokenRoute& route, const Tensor& act,
                        cudaStream_t stream, const DecodeTuning& tuning) {
  gate_up_one_token(x, w13, route, act, stream, tuning);
}
void moe_gate_up_decode(const Tensor& x, const Tensor& w13, const MoeTokenRoute& route, const Tensor& act,
                        cudaStream_t stream, const DecodeTuning& tuning) {
  gate_up_one_token(x, w13, route, act, stream, tuning);
}
void moe_down_decode(const Tensor& act, const MxTensor& w2, const MoeTokenRoute& route, const Tensor& y,
                     cudaStream_t stream, const DecodeTuning& tuning) {
  down_one_token(act, w2, route, y, stream, tuning);
}
void moe_down_decode(const Tensor& act, const Tensor& w2, const MoeTokenRoute& route, const Tensor& y,
                     cudaStream_t stream, const DecodeTuning& tuning) {
  down_one_token(act, w2, route, y, stream, tuning);
}

bool moe_experts_one_launch_fits(int64_t hidden, int64_t inter, int top_k) {
  const GpuInfo& gpu = gpu_info();
  return gpu.major == 9 && hidden > 0 && hidden % kTokenDownRows == 0 && inter > 0 && inter % kMxBlock == 0 &&
         top_k >= 1 && top_k * (hidden / kTokenDownRows) <= gpu.sm_count &&
         TokenExperts(hidden, inter).smem_bytes <= token_experts_smem_limit();
}

void moe_experts_decode(const Tensor& x, const MxTensor& w13, const MxTensor& w2, const MoeTokenRoute& route,
                        const Tensor& act, const Tensor& y, const Tensor& counters, cudaStream_t stream) {
  constexpr const char* op = "moe_experts_decode (one token)";
  check_gate_up(x, w13, route.top_k, act, op);
  MXMOE_CHECK(x.size(0) == 1, op, ": x has ", x.size(0), " tokens, the token route takes one");
  MXMOE_CHECK(check_down(act, w2, y, op) == route.top_k, op, ": act has ", act.size(0), " rows for ", route.top_k,
              " slots");
  const int64_t experts = shape_of(w13)[0], hidden = shape_of(w13)[2], inter = shape_of(w13)[1] / 2;
  MXMOE_CHECK(shape_of(w2) == Shape({experts, hidden, inter}), op, ": w2 ", shape_str(shape_of(w2)),
              " does not match w13 ", shape_str(shape_of(w13)));
  MXMOE_CHECK(moe_experts_one_launch_fits(hidden, inter, route.top_k), op, ": H = ", hidden, ", I = ", inter,
              ", top_k = ", route.top_k, " do not fit one launch (see moe_experts_one_launch_fits)");
  MXMOE_CHECK(counters.device() == Device::cuda && counters.dtype() == DType::i32 &&
                  counters.numel() >= moe_experts_counters(route.top_k) && counters.is_contiguous(),
              op, ": counters must be a contiguous CUDA i32 tensor of at least ", moe_experts_counters(route.top_k),
              " elements");
  TokenExperts p(hidden, inter);
  p.routing = token_routing(route, experts, true, op);
  p.w13 = rows_of(w13);
  p.w2 = rows_of(w2);
  p.x = x.data_as<const __nv_bfloat16>();
  p.act = act.data_as<__nv_bfloat16>();
  p.y = y.data_as<float>();
  p.ready = reinterpret_cast<unsigned*>(counters.data_as<int32_t>());
  p.passed = p.ready + route.top_k;
  p.claims = p.passed + route.top_k;
  launch_pdl(token_experts_kernel, dim3(unsigned(gpu_info().sm_count)), dim3(kThreads), size_t(p.smem_bytes), stream,
             p);
}

}  // namespace mxmoe
