#pragma once
// Tile schedule of the persistent register-A GEMM (kernels/w8a16_gemm_rs.cuh): the CTA builds
// a table of its groups once, then maps any tile number to (group, m-tile, n-tile) with a binary
// search, so a CTA can walk tiles blockIdx.x, blockIdx.x + gridDim.x, ... without a host sync.
// Tiles of kBT rows x 128 W rows are numbered group by group, inside a group n-tile major and
// m-tile minor (CTAs that run at the same time share W tiles in L2); empty groups own no tile.
#include "kernels/w8a16_gemm_kernel.cuh"

namespace mxmoe::w8a16 {

template <int kBT>
struct TileSchedule {
  const int* off = nullptr;     // shared [G+1]: group row offsets clamped to [0, M] (grouped only)
  const int* before = nullptr;  // shared [G+1]: m-tiles of the groups before g (grouped only)
  int G = 1, M = 0, n_tiles = 0, m_tiles = 0;
  int total = 0;                // tiles of the whole GEMM

  // Every thread of the CTA calls it; table: 2 (G+1) ints of shared memory. Ends with a barrier.
  __device__ void init(const GemmArgs& a, int* table) {
    M = a.M;
    G = a.G;
    n_tiles = a.n_tiles;
    if (!a.offsets) {
      m_tiles = (a.M + kBT - 1) / kBT;
      total = m_tiles * n_tiles;
      __syncthreads();
      return;
    }
    int* const s_off = table;
    int* const s_before = table + G + 1;
    for (int i = threadIdx.x; i <= G; i += blockDim.x) s_off[i] = min(max(a.offsets[i], 0), a.M);
    __syncthreads();
    if (threadIdx.x < 32) {
      const int lane = threadIdx.x;
      int carry = 0;  // m-tiles of the groups before this batch of 32
      for (int base = 0; base <= G; base += 32) {
        const int g = base + lane;
        const int rows = g < G ? max(s_off[g + 1] - s_off[g], 0) : 0;
        const int count = (rows + kBT - 1) / kBT;
        int incl = count;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
          const int v = __shfl_up_sync(~0u, incl, o);
          if (lane >= o) incl += v;
        }
        if (g <= G) s_before[g] = carry + incl - count;
        carry += __shfl_sync(~0u, incl, 31);
      }
    }
    __syncthreads();
    off = s_off;
    before = s_before;
    total = before[G] * n_tiles;
  }

  // Coordinates of tile `tile` (0 <= tile < total).
  __host__ __device__ TileCoord at(int tile) const {
    if (!off) return {0, M, 0, tile % m_tiles, tile / m_tiles};
    // The group g with before[g] <= q < before[g+1], q = tile / n_tiles (its m-tiles hold tile).
    const int q = tile / n_tiles;
    int lo = 0, hi = G;  // before[lo] <= q < before[hi]
    while (hi - lo > 1) {
      const int mid = (lo + hi) / 2;
      if (before[mid] <= q) lo = mid;
      else hi = mid;
    }
    const int count = before[lo + 1] - before[lo], local = tile - before[lo] * n_tiles;
    return {off[lo], off[lo + 1], lo, local % count, local / count};
  }
};

}  // namespace mxmoe::w8a16
