// RMSNorm kernels: one warp per normalized row, 16-byte loads (8 bf16 per lane per step).
#include <cuda_bf16.h>

#include "engine/cuda_check.h"
#include "kernels/bf16_vec.cuh"
#include "kernels/rmsnorm.h"
#include "kernels/token_rows.h"

namespace mxmoe {

namespace {

constexpr int kWarpsPerBlock = 8;

struct NormRows {
  int64_t rows;          // tokens · rows_per_token
  int64_t per_token;     // normalized rows inside one token row
  int64_t x_stride, r_stride, out_stride;  // token strides (elements)
  int d;
};

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// residual == nullptr: out = norm(x). Otherwise residual = bf16(residual + x); out = norm(residual).
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
rmsnorm_kernel(const __nv_bfloat16* x, __nv_bfloat16* residual, const __nv_bfloat16* w, float eps,
               __nv_bfloat16* out, NormRows s) {
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= s.rows) return;
  const int lane = threadIdx.x % 32;
  const int64_t t = row / s.per_token, c = (row % s.per_token) * s.d;
  const __nv_bfloat16* xr = x + t * s.x_stride + c;
  __nv_bfloat16* rr = residual ? residual + t * s.r_stride + c : nullptr;
  __nv_bfloat16* orow = out + t * s.out_stride + c;
  // Pass 1: sum of squares (and the rounded residual sum, written back).
  float sq = 0.f;
  for (int i = lane * 8; i < s.d; i += 32 * 8) {
    float v[8];
    load_bf16x8(xr + i, v);
    if (rr) {
      float r[8];
      load_bf16x8(rr + i, r);
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] = round_bf16(r[j] + v[j]);
      store_bf16x8(rr + i, v);
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) sq = fmaf(v[j], v[j], sq);
  }
  const float inv = rsqrtf(warp_sum(sq) / float(s.d) + eps);
  // Pass 2: the same lane re-reads its own elements (L1), normalizes, rounds, weights, rounds.
  const __nv_bfloat16* src = rr ? rr : xr;
  for (int i = lane * 8; i < s.d; i += 32 * 8) {
    float v[8], wv[8];
    load_bf16x8(src + i, v);
    load_bf16x8(w + i, wv);
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = wv[j] * round_bf16(v[j] * inv);
    store_bf16x8(orow + i, v);
  }
}

void check_aligned(const char* op, const Tensor& t, const TokenRows& r) {
  MXMOE_CHECK(reinterpret_cast<uintptr_t>(t.data()) % 16 == 0 && r.stride % 8 == 0, op,
              ": rows must be 16-byte aligned (token stride ", r.stride, " elements)");
}

void launch(const char* op, const Tensor& x, const Tensor* residual, const Tensor& weight, float eps, const Tensor& out,
            cudaStream_t stream) {
  const int64_t d = detail::check_rmsnorm_args(op, x, weight, out, Device::cuda);
  const TokenRows xr = token_rows(x, op), orows = token_rows(out, op);
  TokenRows rr = xr;
  check_aligned(op, x, xr);
  check_aligned(op, out, orows);
  check_aligned(op, weight, TokenRows{1, d, d});
  if (residual) {
    detail::check_rmsnorm_args(op, *residual, weight, out, Device::cuda);
    rr = token_rows(*residual, op);
    check_aligned(op, *residual, rr);
    MXMOE_CHECK(xr.width == d, op, ": rows must be exactly the weight size ", d, ", got ", xr.width);
  }
  const NormRows s{xr.tokens * (xr.width / d), xr.width / d, xr.stride, rr.stride, orows.stride, int(d)};
  if (s.rows == 0) return;
  const int64_t blocks = (s.rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  rmsnorm_kernel<<<unsigned(blocks), kWarpsPerBlock * 32, 0, stream>>>(
      x.data_as<const __nv_bfloat16>(), residual ? residual->data_as<__nv_bfloat16>() : nullptr,
      weight.data_as<const __nv_bfloat16>(), eps, out.data_as<__nv_bfloat16>(), s);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void rmsnorm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out, cudaStream_t stream) {
  launch("rmsnorm", x, nullptr, weight, eps, out, stream);
}

void add_rmsnorm(const Tensor& residual, const Tensor& x, const Tensor& weight, float eps, const Tensor& out,
                 cudaStream_t stream) {
  launch("add_rmsnorm", x, &residual, weight, eps, out, stream);
}

}  // namespace mxmoe
