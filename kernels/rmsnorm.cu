// RMSNorm kernels. A row is held in registers: each of its `tpr` threads (threads per row, a
// power of two) issues every 16-byte load it needs (its kVecs vectors of 8 bf16 from x, the
// residual and the weight) before any math, so a row costs one memory round trip whatever its
// length. How many threads share a row follows the number of rows: few rows (decode, T = 1..8)
// spread each row over up to a whole CTA with a block reduction, so the little work there is
// runs as wide as possible; many rows (prefill, or the per-head QK-norm's T·heads short rows)
// give a row a warp or less, with up to 8 vectors per thread.
// Launched with programmatic dependent launch (kernels/pdl.cuh): the weight is the only input
// read before the wait.
#include <cuda_bf16.h>

#include <algorithm>
#include <bit>

#include "engine/gpu_info.h"
#include "kernels/pdl.cuh"
#include "kernels/rmsnorm.h"
#include "kernels/rmsnorm_row.cuh"
#include "kernels/token_rows.h"

namespace mxmoe {

namespace {

using namespace norm_row_detail;

constexpr int kMinBlock = 256;   // threads per CTA when rows are narrower (several rows per CTA)
constexpr int kMaxVecs = 8;      // 16-byte vectors one thread holds
constexpr int64_t kMaxWidth = int64_t(kMaxRowThreads) * 2 * 8;  // 2 vectors at 1024 threads = 8 at 256

struct NormRows {
  int64_t rows;          // tokens · rows_per_token
  int64_t per_token;     // normalized rows inside one token row
  int64_t x_stride, r_stride, out_stride;  // token strides (elements)
  int d;
  int tpr_shift;         // threads per row = 1 << tpr_shift
};

// residual == nullptr: out = norm(x). Otherwise residual = bf16(residual + x); out = norm(residual).
// Every thread reaches the reduction (no early exit: it may synchronize the CTA).
template <int kVecs>
__global__ void __launch_bounds__(kVecs <= 2 ? kMaxRowThreads : kMinBlock)
rmsnorm_kernel(const __nv_bfloat16* x, __nv_bfloat16* residual, const __nv_bfloat16* w, float eps,
               __nv_bfloat16* out, NormRows s) {
  const int tpr = 1 << s.tpr_shift;
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x >> s.tpr_shift) + (threadIdx.x >> s.tpr_shift);
  const int j = int(threadIdx.x) & (tpr - 1);
  const bool active = row < s.rows;
  const int64_t t = row / s.per_token, c = (row % s.per_token) * s.d;
  const __nv_bfloat16* xr = x + t * s.x_stride + c;
  __nv_bfloat16* rr = residual ? residual + t * s.r_stride + c : nullptr;
  __nv_bfloat16* orow = out + t * s.out_stride + c;
  // Thread j owns vectors j, j + tpr, ...: each tpr-thread step reads one contiguous span.
  // The weight is static: its loads fly before the wait, under the previous kernel's tail (PDL).
  const auto has = [&](int k) { return active && (j + k * tpr) * 8 < s.d; };
  Bf16x8 v[kVecs], wv[kVecs], r[kVecs], o[kVecs];
#pragma unroll
  for (int k = 0; k < kVecs; ++k)
    if (has(k)) wv[k].raw = load16(w + (j + k * tpr) * 8);
  grid_dependency_wait();
  launch_dependents();
#pragma unroll
  for (int k = 0; k < kVecs; ++k) {
    if (!has(k)) continue;
    v[k].raw = load16(xr + (j + k * tpr) * 8);
    if (rr) r[k].raw = load16(rr + (j + k * tpr) * 8);
  }
  norm_row(v, rr ? &r : nullptr, wv, eps, s.d, tpr, has, o);
#pragma unroll
  for (int k = 0; k < kVecs; ++k) {
    if (!has(k)) continue;
    const int i = (j + k * tpr) * 8;
    if (rr) *reinterpret_cast<uint4*>(rr + i) = v[k].raw;
    *reinterpret_cast<uint4*>(orow + i) = o[k].raw;
  }
}

template <int kVecs>
void launch_vecs(const __nv_bfloat16* x, __nv_bfloat16* residual, const __nv_bfloat16* w, float eps,
                 __nv_bfloat16* out, const NormRows& s, cudaStream_t stream) {
  const int tpr = 1 << s.tpr_shift, block = std::max(tpr, kMinBlock);
  const int64_t rows_per_block = block / tpr, blocks = (s.rows + rows_per_block - 1) / rows_per_block;
  launch_pdl(rmsnorm_kernel<kVecs>, dim3(unsigned(blocks)), dim3(block), 0, stream, x, residual, w, eps, out, s);
}

void check_aligned(const char* op, const Tensor& t, const TokenRows& r) {
  MXMOE_CHECK(reinterpret_cast<uintptr_t>(t.data()) % 16 == 0 && r.stride % 8 == 0, op,
              ": rows must be 16-byte aligned (token stride ", r.stride, " elements)");
}

void launch(const char* op, const Tensor& x, const Tensor* residual, const Tensor& weight, float eps, const Tensor& out,
            cudaStream_t stream) {
  const int64_t d = detail::check_rmsnorm_args(op, x, weight, out, Device::cuda);
  MXMOE_CHECK(d <= kMaxWidth, op, ": rows of ", d, " elements are not supported (at most ", kMaxWidth, ")");
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
  const int64_t rows = xr.tokens * (xr.width / d), vecs = d / 8;
  if (rows == 0) return;
  const int tpr = detail::rmsnorm_threads_per_row(rows, vecs);
  const NormRows s{rows, xr.width / d, xr.stride, rr.stride, orows.stride, int(d), std::countr_zero(unsigned(tpr))};
  const auto* xp = x.data_as<const __nv_bfloat16>();
  auto* rp = residual ? residual->data_as<__nv_bfloat16>() : nullptr;
  const auto* wp = weight.data_as<const __nv_bfloat16>();
  auto* outp = out.data_as<__nv_bfloat16>();
  switch (std::bit_ceil(uint64_t((vecs + tpr - 1) / tpr))) {
    case 1: return launch_vecs<1>(xp, rp, wp, eps, outp, s, stream);
    case 2: return launch_vecs<2>(xp, rp, wp, eps, outp, s, stream);
    case 4: return launch_vecs<4>(xp, rp, wp, eps, outp, s, stream);
    default: return launch_vecs<8>(xp, rp, wp, eps, outp, s, stream);
  }
}

}  // namespace

namespace detail {

// Enough rows · threads to fill the GPU (about 1024 threads per SM), never more threads than
// vectors in a row, and at most kMaxVecs vectors per thread (d <= kMaxWidth).
int rmsnorm_threads_per_row(int64_t rows, int64_t vecs) {
  const int64_t want = int64_t(gpu_info().sm_count) * 1024;
  int64_t tpr = int64_t(std::bit_ceil(uint64_t((want + rows - 1) / rows)));
  tpr = std::min(tpr, int64_t(std::bit_ceil(uint64_t(vecs))));
  tpr = std::max(tpr, int64_t(std::bit_ceil(uint64_t((vecs + kMaxVecs - 1) / kMaxVecs))));
  tpr = std::min<int64_t>(tpr, kMaxRowThreads);
  if (vecs > 2 * tpr) tpr = std::min<int64_t>(tpr, kMinBlock);  // 4+ vectors a thread: CTAs of <= 256 (registers)
  return int(tpr);
}

}  // namespace detail

void rmsnorm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out, cudaStream_t stream) {
  launch("rmsnorm", x, nullptr, weight, eps, out, stream);
}

void add_rmsnorm(const Tensor& residual, const Tensor& x, const Tensor& weight, float eps, const Tensor& out,
                 cudaStream_t stream) {
  launch("add_rmsnorm", x, &residual, weight, eps, out, stream);
}

}  // namespace mxmoe
