#pragma once
// The tensor-core GEMM behind w8a16_gemm / w8a16_grouped_gemm / bf16_grouped_gemm (Hopper, sm_90a):
//   y[rows of group g, N] = x[rows, K] · W_g[N, K]ᵀ (+ bias[N]); bf16 in/out, fp32 accumulation.
//
// One CTA of kWG warpgroups computes a BM x BN tile of y, stepping K by 64 (the host uses
// 256 x 128 with 4 warpgroups, and 128 x 128 with 2 warpgroups and 2 CTAs per SM):
//  - x and (bf16) W tiles arrive by cp.async into 128-byte-swizzled K-major shared tiles, the
//    layout wgmma reads directly; 3-8 stages in flight.
//  - MXFP8 W tiles arrive as raw fp8 rows; all threads dequantize them (e4m3 -> f32, times the
//    block's power-of-two scale: exact, then bf16: exact too since e4m3 has 3 mantissa bits) into a
//    swizzled bf16 tile, 1-2 steps ahead of the wgmma that reads it, so it overlaps the wgmma.
//  - Each warpgroup issues wgmma m64nBNk16 on its m64 sub-tile(s); one wgmma batch stays in flight.
// Measured (bench-gemm, H100): ~0.5x of cuBLASLt bf16, latency-bound (ncu: 61% of cycles with no
// eligible warp at 2 warps per scheduler); the way forward is a warp-specialized producer (TMA
// loads + dequant) feeding consumer warpgroups through mbarriers.
// Grouped: offsets (device) are read by every CTA; a warp scans the per-group m-tile counts to
// find which (group, n-tile, m-tile) this CTA owns, so no host sync is needed. The grid is an
// upper bound on the tile count; CTAs past the last tile exit at once.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "kernels/mxfp8_format.h"
#include "kernels/w8a16_gemm_ptx.cuh"

namespace mxmoe::w8a16 {

constexpr int kBK = 64;      // K per stage: one 128-byte swizzled row of bf16

// kCtas CTAs share an SM: with 2, one CTA's dequant and barriers overlap the other's wgmma, at
// the price of a shallower pipeline and <= 128 registers per thread. The pipeline is as deep as
// shared memory allows (at most 8 stages). kWG warpgroups (2 or 4) share the loads and the
// dequant; each owns BM / kWG rows of the tile (more warps hide more latency).
template <int BM, int BN, bool kFp8, int kCtas, int kWG>
struct Tile {
  static constexpr int threads = 128 * kWG;
  static constexpr int sub = BM / (64 * kWG);                  // m64 sub-tiles per warpgroup
  static_assert(sub >= 1 && BM % (64 * kWG) == 0, "BM must be a multiple of 64 x warpgroups");
  static constexpr int a_bytes = BM * kBK * 2;                 // x tile: bf16, swizzled
  static constexpr int b_bytes = BN * kBK * (kFp8 ? 1 : 2);    // W tile: fp8 plain rows, or bf16 swizzled
  static constexpr int bq_bytes = kFp8 ? BN * kBK * 2 : 0;     // dequantized W tile: bf16, swizzled
  // fp8: the dequant runs `ahead` steps before the wgmma that reads it, into ahead+1 buffers. With
  // 2 steps one barrier per step suffices (the next step's tile was written a step earlier).
  static constexpr int ahead = kFp8 && kCtas == 1 ? 2 : 1;
  static constexpr int bq_count = kFp8 ? ahead + 1 : 0;
  // 227 KiB per CTA at most; 228 KiB per SM shared by kCtas CTAs, each reserving 1 KiB.
  static constexpr int budget = kCtas == 1 ? 232448 : 233472 / kCtas - 1024;
  static constexpr int fit = (budget - bq_count * bq_bytes - 1024) / (a_bytes + b_bytes);
  static constexpr int stages = fit < 8 ? fit : 8;
  static_assert(stages >= ahead + 2, "tile too large for the pipeline");
  static constexpr int stage_bytes = stages * (a_bytes + b_bytes);
  static constexpr int smem_bytes = stage_bytes + bq_count * bq_bytes + 1024;  // + slack to align to 1024
  static constexpr int fp8_chunks = BN * (kBK / 16) / threads;        // 16-byte fp8 chunks per thread
};

struct GemmArgs {
  const __nv_bfloat16* x;     // [M, K]
  const void* w;              // [G, N, K] e4m3 or bf16
  const uint8_t* scales;      // [G, N, K/32] e8m0 (fp8 only)
  const __nv_bfloat16* bias;  // [N] or null
  __nv_bfloat16* y;           // [M, N]
  const int* offsets;         // [G + 1] on the device; null: one group of all M rows
  int M, N, K, G;
  int n_tiles;                // ceil(N / BN)
};

// Largest G whose offsets fit in the stage buffers while the tile is looked up.
template <class T>
constexpr int max_groups() {
  return T::stage_bytes / 4 - 1;
}

struct TileCoord {
  int m_begin, m_end;  // rows of the group (clamped to [0, M])
  int group, m_tile, n_tile;
};

// Finds tile number `target` (a CTA's blockIdx.x, or its cluster's index when CTAs pair up);
// false when there is none. s_off: G+1 ints of scratch shared memory.
template <int BM>
__device__ inline bool find_tile(const GemmArgs& a, int* s_off, TileCoord& t, int target) {
  __shared__ int s_info[3];  // group, tile index inside the group, m-tiles of the group
  if (!a.offsets) {
    const int mt = (a.M + BM - 1) / BM;
    t = {0, a.M, 0, target % mt, target / mt};
    return true;
  }
  for (int i = threadIdx.x; i <= a.G; i += blockDim.x) s_off[i] = min(max(a.offsets[i], 0), a.M);
  if (threadIdx.x == 0) s_info[0] = -1;
  __syncthreads();
  if (threadIdx.x < 32) {
    // Tiles are numbered group by group; inside a group n-tile major, m-tile minor (CTAs that run
    // together share the W tile in L2).
    const int lane = threadIdx.x;
    int before = 0;  // m-tiles of the groups before this batch of 32
    for (int base = 0; base < a.G; base += 32) {
      const int g = base + lane;
      const int rows = g < a.G ? s_off[g + 1] - s_off[g] : 0;
      const int count = rows > 0 ? (rows + BM - 1) / BM : 0;
      int incl = count;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int v = __shfl_up_sync(~0u, incl, o);
        if (lane >= o) incl += v;
      }
      const int first = (before + incl - count) * a.n_tiles, last = (before + incl) * a.n_tiles;
      const unsigned hit = __ballot_sync(~0u, target >= first && target < last);
      if (hit) {
        if (lane == __ffs(hit) - 1) {
          s_info[0] = g;
          s_info[1] = target - first;
          s_info[2] = count;
        }
        break;
      }
      before += __shfl_sync(~0u, incl, 31);
    }
  }
  __syncthreads();
  const int g = s_info[0];
  if (g < 0) return false;
  t = {s_off[g], s_off[g + 1], g, s_info[1] % s_info[2], s_info[1] / s_info[2]};
  __syncthreads();  // s_off is reused by the pipeline
  return true;
}

// Dequantizes 16 fp8 values (one 16-byte chunk of a W row) times 2^(scale-127) into 16 bf16.
__device__ __forceinline__ void dequant_chunk(uint4 v, uint8_t scale, uint4& lo, uint4& hi) {
  const float s = e8m0_value(scale);
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
  uint32_t out[8];
#pragma unroll
  for (int w = 0; w < 4; ++w)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const __half2_raw raw = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(words[w] >> (16 * h)), __NV_E4M3);
      const float2 f = __half22float2(__half2(raw));
      const __nv_bfloat162 b = __floats2bfloat162_rn(f.x * s, f.y * s);
      out[w * 2 + h] = *reinterpret_cast<const uint32_t*>(&b);
    }
  lo = make_uint4(out[0], out[1], out[2], out[3]);
  hi = make_uint4(out[4], out[5], out[6], out[7]);
}

template <int BM, int BN, bool kFp8, int kCtas, int kWG>
__global__ void __launch_bounds__(128 * kWG, kCtas) gemm_kernel(const __grid_constant__ GemmArgs a) {
#if defined(MXMOE_HAS_WGMMA)
  using T = Tile<BM, BN, kFp8, kCtas, kWG>;
  constexpr int kSub = T::sub, kThreads = T::threads;
  constexpr int kStages = T::stages;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  uint8_t* const a_s = smem;                              // [kStages][BM][64] bf16
  uint8_t* const b_s = smem + kStages * T::a_bytes;       // [kStages][BN][64] fp8 or bf16
  uint8_t* const bq_s = smem + T::stage_bytes;            // [ahead+1][BN][64] bf16 (fp8 only)

  TileCoord t;
  if (!find_tile<BM>(a, reinterpret_cast<int*>(smem), t, int(blockIdx.x))) return;

  const int tid = threadIdx.x;
  const int K = a.K, N = a.N, k_tiles = (K + kBK - 1) / kBK, k_blocks = K / kMxBlock;
  const int row0 = t.m_begin + t.m_tile * BM, col0 = t.n_tile * BN;
  const size_t w_group = size_t(t.group) * N * K;

  // Stage kt of x and W (zero-filled past the rows, N and K), always one commit group.
  auto load_stage = [&](int kt) {
    if (kt < k_tiles) {
      const int slot = kt % kStages, k0 = kt * kBK;
      uint8_t* as = a_s + slot * T::a_bytes;
#pragma unroll
      for (int i = 0; i < BM * 8 / kThreads; ++i) {
        const int c = tid + i * kThreads, r = c >> 3, kc = c & 7;
        const bool ok = row0 + r < t.m_end && k0 + kc * 8 < K;
        const __nv_bfloat16* src = ok ? a.x + size_t(row0 + r) * K + k0 + kc * 8 : a.x;
        cp_async16(as + r * 128 + ((kc ^ (r & 7)) << 4), src, ok);
      }
      uint8_t* bs = b_s + slot * T::b_bytes;
      if constexpr (kFp8) {
        const uint8_t* w = static_cast<const uint8_t*>(a.w) + w_group;
#pragma unroll
        for (int i = 0; i < T::fp8_chunks; ++i) {
          const int c = tid + i * kThreads, r = c >> 2, q = c & 3;
          const bool ok = col0 + r < N && k0 + q * 16 < K;
          cp_async16(bs + r * 64 + q * 16, ok ? w + size_t(col0 + r) * K + k0 + q * 16 : w, ok);
        }
      } else {
        const __nv_bfloat16* w = static_cast<const __nv_bfloat16*>(a.w) + w_group;
#pragma unroll
        for (int i = 0; i < BN * 8 / kThreads; ++i) {
          const int c = tid + i * kThreads, r = c >> 3, kc = c & 7;
          const bool ok = col0 + r < N && k0 + kc * 8 < K;
          cp_async16(bs + r * 128 + ((kc ^ (r & 7)) << 4), ok ? w + size_t(col0 + r) * K + k0 + kc * 8 : w, ok);
        }
      }
    }
    cp_async_commit();
  };

  // fp8: this thread dequantizes chunks (row tid/4 + i*64, k 16*(tid%4)) of each stage; their
  // scales are fetched from global two dequants ahead into registers.
  constexpr int kAhead = T::ahead;
  constexpr int kChunks = T::fp8_chunks;
  const int q = tid & 3;
  uint8_t scale_cur[kChunks > 0 ? kChunks : 1], scale_next[kChunks > 0 ? kChunks : 1];
  auto load_scales = [&](int kt, uint8_t (&s)[kChunks > 0 ? kChunks : 1]) {
    const uint8_t* sc = a.scales + size_t(t.group) * N * k_blocks;
    const int kb = kt * (kBK / kMxBlock) + (q >> 1);
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      const int n = col0 + (tid >> 2) + i * (kThreads / 4);
      s[i] = kt < k_tiles && n < N && kb < k_blocks ? __ldg(sc + size_t(n) * k_blocks + kb) : 0;
    }
  };
  auto dequant_stage = [&](int kt) {
    const uint8_t* src = b_s + (kt % kStages) * T::b_bytes;
    uint8_t* dst = bq_s + (kt % (kAhead + 1)) * T::bq_bytes;
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      const int r = (tid >> 2) + i * (kThreads / 4);
      uint4 lo, hi;
      dequant_chunk(*reinterpret_cast<const uint4*>(src + r * 64 + q * 16), scale_cur[i], lo, hi);
      *reinterpret_cast<uint4*>(dst + r * 128 + (((2 * q) ^ (r & 7)) << 4)) = lo;
      *reinterpret_cast<uint4*>(dst + r * 128 + (((2 * q + 1) ^ (r & 7)) << 4)) = hi;
    }
#pragma unroll
    for (int i = 0; i < kChunks; ++i) scale_cur[i] = scale_next[i];
    load_scales(kt + 2, scale_next);
  };

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) load_stage(s);
  if constexpr (kFp8) {
    load_scales(0, scale_cur);
    load_scales(1, scale_next);
  }
  // Stages [0, ahead) landed and (fp8) dequantized before the first wgmma.
  cp_async_wait<kStages - 1 - kAhead>();
  fence_proxy_async();
  __syncthreads();
  if constexpr (kFp8) {
#pragma unroll
    for (int s = 0; s < kAhead; ++s) dequant_stage(s);
    fence_proxy_async();
    __syncthreads();
  }

  const int wg = tid / 128;
  float acc[kSub][BN / 2];
#pragma unroll
  for (int j = 0; j < kSub; ++j)
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) acc[j][i] = 0.f;
  const uint64_t a_desc0 = smem_desc(a_s + wg * kSub * 64 * 128);
  const uint64_t b_desc0 = smem_desc(kFp8 ? bq_s : b_s);

  for (int kt = 0; kt < k_tiles; ++kt) {
    // Descriptor start addresses are in 16-byte units.
    const uint64_t a_desc = a_desc0 + uint64_t((kt % kStages) * T::a_bytes >> 4);
    const uint64_t b_desc =
        b_desc0 + uint64_t((kFp8 ? (kt % (kAhead + 1)) * T::bq_bytes : (kt % kStages) * T::b_bytes) >> 4);
#pragma unroll
    for (int j = 0; j < kSub; ++j) fence_operands(acc[j]);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk)
#pragma unroll
      for (int j = 0; j < kSub; ++j)  // sub-tile j: 64 rows = 8192 bytes further (512 in 16-byte units)
        wgmma_bf16<BN>(acc[j], a_desc + 512 * j + 2 * kk, b_desc + 2 * kk);
    wgmma_commit();
    wgmma_wait<1>();  // step kt-1 done: its x slot and bf16 W buffer are free
#pragma unroll
    for (int j = 0; j < kSub; ++j) fence_operands(acc[j]);
    // Stage kt+ahead landed (fp8: it is dequantized now; bf16: ahead = 1, read by the next wgmma).
    cp_async_wait<kStages - 2 - kAhead>();
    fence_proxy_async();
    __syncthreads();
    load_stage(kt + kStages - 1);
    if constexpr (kFp8) {
      if (kt + kAhead < k_tiles) dequant_stage(kt + kAhead);
      fence_proxy_async();
      if constexpr (kAhead == 1) __syncthreads();  // else the next step's barrier orders it
    }
  }
  wgmma_wait<0>();
#pragma unroll
  for (int j = 0; j < kSub; ++j) fence_operands(acc[j]);

  // Epilogue: accumulator (row warp*16 + lane/4 + 8h, col nb*8 + 2*(lane%4) + {0,1}).
  const int warp = (tid & 127) >> 5, lane = tid & 31;
  const int r_base = row0 + wg * kSub * 64 + warp * 16 + (lane >> 2);
  const bool pairs = (N & 1) == 0;  // bf16x2 stores stay 4-byte aligned
#pragma unroll
  for (int nb = 0; nb < BN / 8; ++nb) {
    const int col = col0 + nb * 8 + 2 * (lane & 3);
    if (col >= N) continue;
    float b0 = 0.f, b1 = 0.f;
    if (a.bias) {
      b0 = __bfloat162float(a.bias[col]);
      if (col + 1 < N) b1 = __bfloat162float(a.bias[col + 1]);
    }
#pragma unroll
    for (int h = 0; h < 2 * kSub; ++h) {
      const int row = r_base + 8 * (h & 1) + 64 * (h >> 1);
      if (row >= t.m_end) continue;
      const float v0 = acc[h >> 1][nb * 4 + 2 * (h & 1)] + b0, v1 = acc[h >> 1][nb * 4 + 2 * (h & 1) + 1] + b1;
      __nv_bfloat16* out = a.y + size_t(row) * N + col;
      if (pairs) {
        *reinterpret_cast<__nv_bfloat162*>(out) = __floats2bfloat162_rn(v0, v1);
      } else {
        out[0] = __float2bfloat16_rn(v0);
        if (col + 1 < N) out[1] = __float2bfloat16_rn(v1);
      }
    }
  }
#else
  __trap();  // wgmma needs sm_90a; the host refuses other GPUs before launching
#endif
}

}  // namespace mxmoe::w8a16
