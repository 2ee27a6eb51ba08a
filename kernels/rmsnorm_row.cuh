#pragma once
// One row of RMSNorm (optionally after the residual add) spread over `tpr` threads, each holding
// kVecs 16-byte vectors of it in registers: the arithmetic of kernels/rmsnorm.cu, shared with the
// kernels that norm a row themselves (the MoE router GEMV's prologue and the MoE combine's
// epilogue, kernels/moe_permute.cu), so all give bit-equal results.
#include <cuda_bf16.h>

#include <cstdint>

namespace mxmoe::norm_row_detail {

constexpr int kMaxRowThreads = 1024;

union Bf16x8 {
  uint4 raw;
  __nv_bfloat162 pair[4];
};

__device__ __forceinline__ uint4 load16(const __nv_bfloat16* p) { return *reinterpret_cast<const uint4*>(p); }

// Sum over the `tpr` threads of a row (an aligned group of lanes, or whole warps of one CTA).
__device__ __forceinline__ float row_sum(float v, int tpr) {
  for (int o = (tpr < 32 ? tpr : 32) / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (tpr <= 32) return v;
  __shared__ float warp_sums[kMaxRowThreads / 32];
  const int warp = threadIdx.x / 32, first = warp & ~(tpr / 32 - 1);
  if (threadIdx.x % 32 == 0) warp_sums[warp] = v;
  __syncthreads();
  v = 0.f;
  for (int w = first; w < first + tpr / 32; ++w) v += warp_sums[w];
  return v;
}

// Thread j of the row owns vectors j, j + tpr, ... (`has(k)`: vector k is in the row). v: x's
// vectors; with `r` (the residual's), v becomes bf16(x + residual) first, the sum rounded before
// squaring as in Hugging Face (it adds two bf16 tensors). o = bf16(w · bf16(v · rsqrt(mean(v²) + eps))).
// Every thread of the block calls it (row_sum may synchronize the CTA).
template <int kVecs, class Has>
__device__ __forceinline__ void norm_row(Bf16x8 (&v)[kVecs], const Bf16x8 (*r)[kVecs], const Bf16x8 (&wv)[kVecs],
                                         float eps, int d, int tpr, Has has, Bf16x8 (&o)[kVecs]) {
  float sq = 0.f;
#pragma unroll
  for (int k = 0; k < kVecs; ++k) {
    if (!has(k)) continue;
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      float2 f = __bfloat1622float2(v[k].pair[p]);
      if (r) {
        const float2 g = __bfloat1622float2((*r)[k].pair[p]);
        v[k].pair[p] = __floats2bfloat162_rn(f.x + g.x, f.y + g.y);
        f = __bfloat1622float2(v[k].pair[p]);
      }
      sq = fmaf(f.x, f.x, fmaf(f.y, f.y, sq));
    }
  }
  const float inv = rsqrtf(row_sum(sq, tpr) / float(d) + eps);
#pragma unroll
  for (int k = 0; k < kVecs; ++k) {
    if (!has(k)) continue;
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      const float2 f = __bfloat1622float2(v[k].pair[p]), g = __bfloat1622float2(wv[k].pair[p]);
      const float2 n = __bfloat1622float2(__floats2bfloat162_rn(f.x * inv, f.y * inv));
      o[k].pair[p] = __floats2bfloat162_rn(g.x * n.x, g.y * n.y);
    }
  }
}

}  // namespace mxmoe::norm_row_detail
