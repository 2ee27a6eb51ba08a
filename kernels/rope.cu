// RoPE kernel: one thread per (token, head, rotation pair); q and k heads in one launch.
#include <cuda_bf16.h>

#include "engine/cuda_check.h"
#include "kernels/bf16_vec.cuh"
#include "kernels/rope.h"
#include "kernels/token_rows.h"

namespace mxmoe {

namespace {

struct RopeArgs {
  __nv_bfloat16* q;
  __nv_bfloat16* k;
  int64_t q_stride, k_stride;  // token strides (elements)
  int q_heads, k_heads, half;
  int64_t tokens;
};

__global__ void rope_kernel(RopeArgs a, const int32_t* positions, const float* inv_freq, float scaling) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int heads = a.q_heads + a.k_heads;
  if (idx >= a.tokens * heads * a.half) return;
  const int i = int(idx % a.half);
  const int h = int((idx / a.half) % heads);
  const int64_t t = idx / (int64_t(a.half) * heads);
  __nv_bfloat16* row = h < a.q_heads ? a.q + t * a.q_stride + int64_t(h) * 2 * a.half
                                     : a.k + t * a.k_stride + int64_t(h - a.q_heads) * 2 * a.half;
  const float freq = float(positions[t]) * inv_freq[i];
  float s, c;
  sincosf(freq, &s, &c);
  c = round_bf16(c * scaling);
  s = round_bf16(s * scaling);
  const float x0 = __bfloat162float(row[i]), x1 = __bfloat162float(row[i + a.half]);
  row[i] = __float2bfloat16(round_bf16(x0 * c) + round_bf16(-x1 * s));
  row[i + a.half] = __float2bfloat16(round_bf16(x1 * c) + round_bf16(x0 * s));
}

}  // namespace

void rope(const Tensor& q, const Tensor& k, const Tensor& positions, const Tensor& inv_freq, float attention_scaling,
          cudaStream_t stream) {
  detail::check_rope_args("rope", q, k, positions, inv_freq, Device::cuda);
  const TokenRows qr = token_rows(q, "rope q"), kr = token_rows(k, "rope k");
  const RopeArgs a{q.data_as<__nv_bfloat16>(), k.data_as<__nv_bfloat16>(), qr.stride, kr.stride, int(q.size(1)),
                   int(k.size(1)), int(q.size(2) / 2), qr.tokens};
  const int64_t work = a.tokens * (a.q_heads + a.k_heads) * a.half;
  if (work == 0) return;
  constexpr int kThreads = 256;
  rope_kernel<<<unsigned((work + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      a, positions.data_as<const int32_t>(), inv_freq.data_as<const float>(), attention_scaling);
  CUDA_CHECK_LAUNCH();
}

}  // namespace mxmoe
