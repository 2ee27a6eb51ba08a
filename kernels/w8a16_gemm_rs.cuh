#pragma once
// W8A16 GEMM with a TMA pipeline and register-A wgmma (Hopper, sm_90a) behind w8a16_gemm / w8a16_grouped_gemm:
//   y[rows of group g, N] = x[rows, K] · W_g[N, K]ᵀ (+ bias[N]); MXFP8 W, bf16 x and y, fp32 accumulation.
//
// It computes the transposed tile yᵀ = W·xᵀ, so W is the wgmma A operand, taken from registers:
// each thread reads its A fragment as raw fp8 from shared memory, turns it into bf16 and
// applies the block scale in a few integer/bf16 ops (kernels/w8a16_gemm_dequant.cuh), and x is
// the B operand straight from shared memory. No bf16 copy of W is written, and the dequant of the
// next K step runs while the tensor cores work on this one.
//
// One CTA of 2 warpgroups owns a tile of 128 W rows (y columns) x kBT tokens (y rows):
//  - TMA: lane 0 of one warp issues the loads of the x tile [kBT, 64] bf16 (128-byte swizzle, the
//    wgmma layout; one box, or for a grouped tile with fewer rows 64-token boxes, those it has)
//    and the W tile [128, 64] fp8 (64-byte swizzle: a warp's 8 row reads hit 8 distinct bank
//    groups) into a ring of stages guarded by full (TMA bytes landed) and empty (all 8 warps done)
//    mbarriers, kStages - 2 steps ahead of the wgmma. The warp that refills rotates: the ~90
//    instructions of a refill on warp 0 at every step paced its warpgroup (the four warps sync at
//    every wgmma) and, through the empty barrier, the other (+8.5% dense when spread). Tails (M, N,
//    K) are TMA zero fill or rows whose results are never stored.
//  - warpgroups 0 and 1: 64 W rows each, wgmma m64 x N x k16, N = kBT, or in grouped GEMMs the
//    tile's tokens rounded up to 64 (a group's last tile is often short: at ~128 rows per expert a
//    full 256-token wgmma would do twice the work); fp32 accumulators; the scale bytes come from
//    global memory a group of 4 K steps ahead.
// Why no dedicated producer warp: the 256-token tile needs ~210 registers per thread
// (128 accumulators + fragments). A 9th warp puts 3 warps on one SM sub-partition (16K registers),
// capping every thread at 168 (launch fails above); with a producer warpgroup and setmaxnreg,
// ptxas still compiles every thread to the launch bound's 168 (spills, serialized wgmma: measured
// again on CUDA 13). With 8 warps each thread may use 255.
// kPair: CTAs run in clusters of 2 that own the same tokens and neighbouring W tiles; each loads
// half of the x tile and TMA multicasts it to both, so a CTA pulls 24 KB instead of 40 KB per K
// step through L2 (the unpaired kernel needs ~40 B/clk per SM at full wgmma rate). A stage is
// refilled only when the warps of both CTAs released it (remote mbarrier arrives). Measured
// slower than unpaired tiles on a fresh H100 (0.65-0.95x, the pair runs in lock-step), so kept
// only as a benchmarked variant (GemmTile::rs_t256_pair).
// Grouped GEMMs share the dense tile lookup (find_tile: device offsets, no host sync); W is seen
// as one [G*N, K] matrix, so a tile's rows past N belong to the next group and are not stored.
// kGated (grouped, MoE gate/up): W_g = [gate rows; up rows] (N = 2I) and the output is
// act = SiLU(x·gateᵀ) ⊙ (x·upᵀ) [rows, I]. A tile takes 64 gate rows into warpgroup 0 and the 64
// matching up rows into warpgroup 1 (two 64-row TMA boxes), so the two accumulators of a (row,
// token) sit in the same thread of either warpgroup; the two swap half their accumulators through
// shared memory and each stores act for half the tokens. The [rows, 2I] gate_up tensor is never
// written or read back.
#include <cuda.h>
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/silu.cuh"
#include "kernels/w8a16_gemm_dequant.cuh"
#include "kernels/w8a16_gemm_kernel.cuh"
#include "kernels/w8a16_gemm_tma.cuh"

namespace mxmoe::w8a16 {

constexpr int kXBlockBytes = 64 * kBK * 2;  // 64 tokens x 64 k of x (bf16), one TMA box

template <int kBT, bool kPair>
struct RsTile {
  static constexpr int cluster = kPair ? 2 : 1;
  static constexpr int BW = 128;        // W rows per tile: 2 warpgroups x 64
  static constexpr int threads = 256;   // 2 warpgroups
  static constexpr int x_bytes = kBT * kBK * 2;  // kBT / 64 blocks of kXBlockBytes
  static constexpr int w_bytes = BW * kBK;
  static constexpr int stage_bytes = x_bytes + w_bytes;
  static constexpr int fit = (232448 - 1024 - 256) / stage_bytes;  // 227 KiB - alignment slack - barriers
  static constexpr int stages = fit < 8 ? fit : 8;
  static_assert(stages >= 3, "tile too large for the pipeline");
  static constexpr int smem_bytes = stages * stage_bytes + 1024 + 256;
};

struct RsArgs {
  CUtensorMap x_map;         // x [M, K] bf16, box [kBT / cluster, 64] (the tile), 128-byte swizzle
  CUtensorMap x_blocks_map;  // grouped: the same with box [64, 64], for tiles of fewer rows
  CUtensorMap w_map;  // W [G*N, K] e4m3, box [128, 64] (gated: [64, 64]), 64-byte swizzle
  GemmArgs g;         // y, bias, scales, offsets, sizes (x and w unused)
};

// kFitTokens: a tile multiplies only the 64-token blocks it has rows in (grouped GEMMs, where a
// group's last tile is often short). Dense GEMMs have one short tile at most and run the full-width
// form alone: the four widths in one kernel cost them 4.9% (bench-gemm geomean, one call). CTA
// pairs share full tiles.
template <int kBT, bool kPair, bool kFitTokens, bool kGated>
__global__ void __launch_bounds__(256, 1) rs_gemm_kernel(const __grid_constant__ RsArgs args) {
  static_assert(!(kPair && kFitTokens), "paired CTAs load and multiply full tiles");
  static_assert(!kGated || kFitTokens, "the gated form is grouped");
#if defined(MXMOE_HAS_WGMMA)
  using T = RsTile<kBT, kPair>;
  constexpr int kStages = T::stages;
  const GemmArgs& a = args.g;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  uint8_t* const x_s = smem;                              // [kStages][kBT][64] bf16, swizzled
  uint8_t* const w_s = smem + kStages * T::x_bytes;       // [kStages][128][64] e4m3, swizzled
  uint64_t* const full = reinterpret_cast<uint64_t*>(smem + kStages * T::stage_bytes);  // [kStages]
  uint64_t* const empty = full + kStages;                                                // [kStages]

  // Paired: the cluster shares tile number blockIdx.x / 2 (a.n_tiles counts W tile pairs);
  // CTA `rank` takes W tile 2·n + rank (past N for odd tile counts: computed, never stored).
  const uint32_t rank = kPair ? cluster_ctarank() : 0;
  TileCoord t;
  if (!find_tile<kBT>(a, reinterpret_cast<int*>(smem), t, int(blockIdx.x) / T::cluster)) return;
  const int k_tiles = (a.K + kBK - 1) / kBK;
  // Gated: W rows col0 + [0, 64) of the gate half and of the up half, act columns col0 + [0, 64).
  constexpr int kTileCols = kGated ? T::BW / 2 : T::BW;
  const int out_n = kGated ? a.N / 2 : a.N;
  const int row0 = t.m_begin + t.m_tile * kBT, col0 = (t.n_tile * T::cluster + int(rank)) * kTileCols;
  // The W row (inside the group) of tile row rr.
  const auto w_row = [&](int rr) { return kGated && rr >= 64 ? out_n + col0 + rr - 64 : col0 + rr; };
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], 8 * T::cluster);  // one arrive per warp of the cluster
    }
    mbar_fence_init();
  }
  fence_proxy_async();  // find_tile's scratch writes precede the TMA writes to the same bytes
  if constexpr (kPair) cluster_sync();
  else __syncthreads();

  // The tile's rows in 64-token blocks: a group's last tile often holds only a few rows, and it
  // loads and multiplies only the blocks it has (wgmma N = 64 · x_blocks).
  const int x_blocks = kFitTokens ? (min(kBT, t.m_end - row0) + 63) / 64 : kBT / 64;

  // TMA of K step kt into its stage once every warp has released the stage's last use.
  const int w_row0 = t.group * a.N + col0;
  auto produce = [&](int kt) {
    const int s = kt % kStages;
    mbar_wait(&empty[s], ((kt / kStages) & 1) ^ 1);
    uint8_t* const x_stage = x_s + s * T::x_bytes;
    if constexpr (kPair) {
      mbar_arrive_expect_tx(&full[s], T::stage_bytes);  // the peer's half of x lands here too
      tma_load_2d_multicast(x_stage + int(rank) * (T::x_bytes / 2), &args.x_map, kt * kBK, row0 + int(rank) * (kBT / 2),
                            &full[s], 0x3);
    } else {
      mbar_arrive_expect_tx(&full[s], x_blocks * kXBlockBytes + T::w_bytes);
      if (kFitTokens && x_blocks < kBT / 64) {
        for (int b = 0; b < x_blocks; ++b)
          tma_load_2d(x_stage + b * kXBlockBytes, &args.x_blocks_map, kt * kBK, row0 + 64 * b, &full[s]);
      } else {
        tma_load_2d(x_stage, &args.x_map, kt * kBK, row0, &full[s]);
      }
    }
    tma_load_2d(w_s + s * T::w_bytes, &args.w_map, kt * kBK, w_row0, &full[s]);
    if constexpr (kGated) tma_load_2d(w_s + s * T::w_bytes + 64 * kBK, &args.w_map, kt * kBK, w_row0 + out_n, &full[s]);
  };
  if (threadIdx.x == 0)
    for (int kt = 0; kt < kStages && kt < k_tiles; ++kt) produce(kt);  // empty stages: no wait

  // Warpgroup cw owns tile W rows [64cw, 64cw + 64); this thread's A rows are
  // r and r + 8 (r = 64cw + 16·warp + lane/4), its k pairs 2·(lane%4) (+8) of each k16 step.
  const int cw = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int r = 64 * cw + 16 * warp + lane / 4;
  const uint32_t sel = spread_selector(uint32_t(lane % 4));
  // 64-byte swizzle: 16-byte chunk c of tile row r sits at chunk c ^ ((r / 2) % 4) (the same for r + 8).
  const int swz = (r / 2) % 4;

  // Scale bytes of rows r, r+8, read 4 K steps (8 blocks) at a time: word pair sw[j] holds blocks
  // 8g..8g+7 of row r + 8j for K-step group g (steps 4g..4g+3), so a step costs no global load and
  // the fast/wide choice is one test per group. 0x7f (1.0) where the row or block is out of range
  // (its fp8 bytes are zero fill or never stored). One 8-byte load per row where the rows' scales
  // are 8-byte aligned (K a multiple of 256, as every model shape here), else byte loads.
  const int k_blocks = a.K / kMxBlock;
  const uint8_t* sc[2];
  bool row_ok[2];
  for (int j = 0; j < 2; ++j) {
    const int n = w_row(r + 8 * j);
    row_ok[j] = col0 + (r + 8 * j) % kTileCols < out_n;
    sc[j] = a.scales + (size_t(t.group) * a.N + size_t(row_ok[j] ? n : 0)) * k_blocks;
  }
  const bool scale_words = k_blocks % 8 == 0 && (reinterpret_cast<uintptr_t>(a.scales) & 7) == 0;
  auto load_scale_group = [&](int g, uint2 (&sw)[2]) {
    const int kb0 = 8 * g;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      sw[j] = make_uint2(0x7f7f7f7fu, 0x7f7f7f7fu);
      if (!row_ok[j] || kb0 >= k_blocks) continue;
      if (scale_words) {
        sw[j] = __ldg(reinterpret_cast<const uint2*>(sc[j] + kb0));
      } else {
        uint32_t w[2] = {sw[j].x, sw[j].y};
        for (int i = 0; i < 8 && kb0 + i < k_blocks; ++i)
          w[i / 4] = (w[i / 4] & ~(0xffu << (8 * (i % 4)))) | (uint32_t(__ldg(sc[j] + kb0 + i)) << (8 * (i % 4)));
        sw[j] = make_uint2(w[0], w[1]);
      }
    }
  };

  // The x tile's descriptor: only its low word (the start address) changes with stage and k16 step.
  const uint64_t x_desc0 = smem_desc(x_s);
  const uint32_t x_desc_lo0 = uint32_t(x_desc0), x_desc_hi = uint32_t(x_desc0 >> 32);
  const uint32_t w_s0 = smem_addr(w_s);

  // Scale bytes s[2·row + block] of one K step; A fragments of its k16 steps kk0, kk0 + 1.
  auto dequant = [&]<bool kWide>(uint32_t w_tile, int kk0, const uint32_t (&s)[4], uint32_t (&frag)[2][4]) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int kk = kk0 + i, chunk = (kk ^ swz) * 16;
      const uint4 row0 = ld_shared_16(w_tile + r * 64 + chunk);
      const uint4 row1 = ld_shared_16(w_tile + (r + 8) * 64 + chunk);
      dequant_fragment<kWide>(row0, row1, sel, scale_factor<kWide>(s[kk / 2]), scale_factor<kWide>(s[2 + kk / 2]),
                              frag[i]);
    }
  };

  // Mainloop and epilogue for a tile of kN tokens (kN / 2 accumulators per thread).
  auto run = [&]<int kN>() {
    float acc[kN / 2];
#pragma unroll
    for (int i = 0; i < kN / 2; ++i) acc[i] = 0.f;
    // A fragments of k16 steps 0-1 (lo) and 2-3 (hi) of a K step, one set for even and one for odd
    // K steps: each half is one wgmma group, and two groups stay in flight while the next half is
    // dequantized (measured 2-15% faster than one on every bench-gemm shape), so a set is rewritten
    // only two K steps after it was issued, when wgmma_wait has retired the groups that read it.
    uint32_t frag_lo[2][2][4], frag_hi[2][2][4];
    // Issues k16 steps kk0, kk0+1 from the x tile at descriptor low word x_lo, then retires all but
    // the last two groups.
    auto mma = [&](uint32_t x_lo, int kk0, const uint32_t (&frag)[2][4]) {
      uint64_t desc[2];  // before the fence: ptxas serializes wgmmas whose inputs are defined inside
#pragma unroll
      for (int i = 0; i < 2; ++i) desc[i] = (uint64_t(x_desc_hi) << 32) | (x_lo + 2 * (kk0 + i));  // +32 bytes per k16
      fence_operands(acc);
      wgmma_fence();
#pragma unroll
      for (int i = 0; i < 2; ++i) wgmma_bf16_rs<kN>(acc, frag[i], desc[i]);
      wgmma_commit();
      wgmma_wait<2>();
      fence_operands(acc);
    };
    int stage = 0;       // kt % kStages
    uint32_t phase = 0;  // (kt / kStages) & 1
    // Scale words of the current group of 4 K steps and the next; wide: the current group needs the
    // wide dequant (a scale >= 128: the fast factor 2^(s-7) is a normal bf16 only up to s = 134).
    uint2 sw[2], sw_next[2];
    bool wide = false;
    load_scale_group(0, sw_next);
    auto enter_group = [&](int kt) {  // kt % 4 == 0
      sw[0] = sw_next[0];
      sw[1] = sw_next[1];
      load_scale_group(kt / 4 + 1, sw_next);
      wide = warp_needs_wide(sw[0].x | sw[0].y | sw[1].x | sw[1].y);
    };
    // K step kt: blocks 2(kt % 4), +1 of the group, bytes 0-1 (even kt) or 2-3 (odd) of word x
    // (kt % 4 < 2) or y.
    auto step = [&](int kt, uint32_t (&lo)[2][4], uint32_t (&hi)[2][4]) {
      mbar_wait(&full[stage], phase);
      uint32_t s[4];
#pragma unroll
      for (int i = 0; i < 4; ++i)  // i = 2·row + block
        s[i] = scale_byte(kt & 2 ? sw[i >> 1].y : sw[i >> 1].x, uint32_t(2 * (kt & 1) + (i & 1)));
      const uint32_t w_tile = w_s0 + stage * T::w_bytes;
      const uint32_t x_lo = x_desc_lo0 + stage * (T::x_bytes >> 4);
      // ptxas serializes every wgmma, silently, where it sees fragment writes that may cross the
      // groups in flight: compiling the wide path out (a measurement) or one branch around both
      // halves did so (0.82x). The CPU test gemm_wgmma_not_serialized reads ptxas's notes.
      if (wide) dequant.template operator()<true>(w_tile, 0, s, lo);
      else dequant.template operator()<false>(w_tile, 0, s, lo);
      mma(x_lo, 0, lo);
      if (wide) dequant.template operator()<true>(w_tile, 2, s, hi);
      else dequant.template operator()<false>(w_tile, 2, s, hi);
      mma(x_lo, 2, hi);  // retires step kt-1: its stage can be refilled
      if (kt > 0 && lane == 0) {
        const int prev = stage == 0 ? kStages - 1 : stage - 1;
        mbar_arrive(&empty[prev]);
        if constexpr (kPair) mbar_arrive_cluster(&empty[prev], rank ^ 1);
      }
      // Lane 0 of one warp refills the stage of step kt-2, which every warp left a step ago, so it
      // seldom waits for the other warpgroup. The warp rotates (warpgroups alternating): the ~90
      // instructions of a refill on one warp would pace its whole warpgroup, which syncs at every
      // wgmma.
      if (threadIdx.x == 128 * (kt & 1) + 32 * ((kt >> 1) & 3) && kt >= 2 && kt - 2 + kStages < k_tiles)
        produce(kt - 2 + kStages);
      if (++stage == kStages) {
        stage = 0;
        phase ^= 1;
      }
    };
    int kt = 0;
    for (; kt + 1 < k_tiles; kt += 2) {
      if (kt % 4 == 0) enter_group(kt);
      step(kt, frag_lo[0], frag_hi[0]);
      step(kt + 1, frag_lo[1], frag_hi[1]);
    }
    if (kt < k_tiles) {
      if (kt % 4 == 0) enter_group(kt);
      step(kt, frag_lo[0], frag_hi[0]);
    }
    wgmma_wait<0>();
    fence_operands(acc);
    // Gated: warpgroup 0 finishes the tile's first kN/2 tokens (acc[0, kN/4)), warpgroup 1 the
    // rest; each hands the other half of its accumulators to its partner thread (tid ^ 128)
    // through the drained stages, so both share the SiLU and the stores.
    if constexpr (kGated) {
      constexpr int kHalf = kN / 4;
      float* const xchg = reinterpret_cast<float*>(smem);  // [kHalf][256]
      __syncthreads();  // every wgmma of both warpgroups has read its stages
      const auto act = [&]<int kKeep>() {
#pragma unroll
        for (int i = 0; i < kHalf; ++i) xchg[i * 256 + threadIdx.x] = acc[kHalf - kKeep + i];
        __syncthreads();
#pragma unroll
        for (int i = 0; i < kHalf; ++i) {
          const float mine = acc[kKeep + i], theirs = xchg[i * 256 + (threadIdx.x ^ 128)];
          acc[kKeep + i] = kKeep == 0 ? silu(mine) * theirs : silu(theirs) * mine;  // warpgroup 0 holds the gate
        }
      };
      if (cw == 0) act.template operator()<0>();
      else act.template operator()<kHalf>();
    }

    // Epilogue: acc[4nb + 2h + e] is yᵀ(W row r + 8h, token 8nb + 2·(lane%4) + e). Lanes g and g^1
    // (lane ^ 4) swap one value so each stores a bf16x2 pair of neighbouring y columns: even g the
    // pair (n, n+1) of token 2t, odd g the pair (n-1, n) of token 2t+1.
    const bool odd = (lane / 4) & 1;
    // First column of this thread's pair (row r; +8 for h = 1); gated, both warpgroups store rows r % 64.
    const int n_pair = col0 + (kGated ? r % 64 : r) - (odd ? 1 : 0);
    const bool pairs = (out_n & 1) == 0;           // bf16x2 stores stay 4-byte aligned
    float bias[2][2] = {};
    if (a.bias)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int e = 0; e < 2; ++e)
          if (n_pair + 8 * h + e < out_n) bias[h][e] = __bfloat162float(a.bias[n_pair + 8 * h + e]);
    const auto store = [&]<int kNb0, int kNb1>() {  // token blocks [kNb0, kNb1) of 8
#pragma unroll
      for (int nb = kNb0; nb < kNb1; ++nb) {
        const int row = row0 + 8 * nb + 2 * (lane % 4) + (odd ? 1 : 0);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float mine0 = acc[4 * nb + 2 * h], mine1 = acc[4 * nb + 2 * h + 1];
          const float other = __shfl_xor_sync(~0u, odd ? mine0 : mine1, 4);
          const float v0 = (odd ? other : mine0) + bias[h][0], v1 = (odd ? mine1 : other) + bias[h][1];
          const int col = n_pair + 8 * h;
          if (row >= t.m_end || col >= out_n) continue;
          __nv_bfloat16* out = a.y + size_t(row) * out_n + col;
          if (pairs) {
            *reinterpret_cast<__nv_bfloat162*>(out) = __floats2bfloat162_rn(v0, v1);
          } else {
            out[0] = __float2bfloat16_rn(v0);
            if (col + 1 < out_n) out[1] = __float2bfloat16_rn(v1);
          }
        }
      }
    };
    if constexpr (!kGated) store.template operator()<0, kN / 8>();
    else if (cw == 0) store.template operator()<0, kN / 16>();
    else store.template operator()<kN / 16, kN / 8>();
  };
  if constexpr (!kFitTokens) {
    run.template operator()<kBT>();
  } else {
    if (x_blocks == 1) run.template operator()<64>();
    else if (x_blocks == 2 || kBT == 128) run.template operator()<128>();
    else if constexpr (kBT == 256) {
      if (x_blocks == 3) run.template operator()<192>();
      else run.template operator()<256>();
    }
  }
  if constexpr (kPair) cluster_sync();  // the peer may still arrive on this CTA's barriers
#else
  __trap();  // wgmma/TMA pipeline needs sm_90a; the host refuses other GPUs before launching
#endif
}

}  // namespace mxmoe::w8a16
