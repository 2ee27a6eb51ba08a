// RoPE kernel: one thread per (token, head, rotation pair); q and k heads in one launch. And the
// fused per-head QK-norm + rope + KV-cache write of the attention block.
#include <cuda_bf16.h>

#include <utility>

#include "engine/cuda_check.h"
#include "kernels/bf16_vec.cuh"
#include "kernels/attention.h"  // check_kv_write_args
#include "kernels/pdl.cuh"
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


// One group of G = head_dim / 8 threads per head row (q heads, then k, then v of a token); thread j
// holds elements 8j..8j+7, so rope's partner element e ± head_dim/2 sits in thread j ^ (G/2).
// Every thread runs the shuffles (v rows and rows past the end too) so whole warps take part.
struct FusedArgs {
  __nv_bfloat16 *q, *k;
  const __nv_bfloat16* v;  // read only
  int64_t q_stride, k_stride, v_stride;  // token strides (elements)
  const __nv_bfloat16 *q_norm, *k_norm;  // nullptr: no QK-norm
  float eps, scaling;
  const int32_t* positions;
  const float* inv_freq;
  const int32_t* slots;
  __nv_bfloat16 *k_cache, *v_cache;
  int64_t tokens;
  int q_heads, kv_heads, block_size;
};

template <int HD>
__global__ void __launch_bounds__(256) qk_norm_rope_kv_write_kernel(FusedArgs a) {
  constexpr int G = HD / 8, kHalf = HD / 2;
  const int heads = a.q_heads + 2 * a.kv_heads;
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / G;
  const int j = int(threadIdx.x) % G;
  const bool active = row < a.tokens * heads;
  const int64_t t = active ? row / heads : 0;
  const int h = int(row % heads);
  const bool is_q = h < a.q_heads, is_v = h >= a.q_heads + a.kv_heads;
  const int kvh = is_q ? 0 : (h - a.q_heads) % a.kv_heads;
  __nv_bfloat16* x = is_q ? a.q + t * a.q_stride + int64_t(h) * HD : a.k + t * a.k_stride + int64_t(kvh) * HD;
  const __nv_bfloat16* src = is_v ? a.v + t * a.v_stride + int64_t(kvh) * HD : x;
  const __nv_bfloat16* norm = is_q ? a.q_norm : a.k_norm;
  // Before the wait (PDL): only the static norm weight and frequencies.
  union { uint4 raw; __nv_bfloat162 pair[4]; } u{}, w{};
  if (active && norm && !is_v) w.raw = *reinterpret_cast<const uint4*>(norm + 8 * j);
  float freq[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) freq[e] = a.inv_freq[(8 * j + e) % kHalf];
  grid_dependency_wait();
  launch_dependents();
  if (active) u.raw = *reinterpret_cast<const uint4*>(src + 8 * j);
  const int64_t slot = active && !is_q ? a.slots[t] : -1;
  const float pos = active ? float(a.positions[t]) : 0.f;
  float f[8];
#pragma unroll
  for (int p = 0; p < 4; ++p) {
    const float2 v2 = __bfloat1622float2(u.pair[p]);
    f[2 * p] = v2.x;
    f[2 * p + 1] = v2.y;
  }
  if (a.q_norm) {  // as rmsnorm_kernel with a row over G threads: same sums in the same order
    float sq = 0.f;
#pragma unroll
    for (int p = 0; p < 4; ++p) sq = fmaf(f[2 * p], f[2 * p], fmaf(f[2 * p + 1], f[2 * p + 1], sq));
#pragma unroll
    for (int o = G / 2; o > 0; o >>= 1) sq += __shfl_xor_sync(0xffffffffu, sq, o);
    const float inv = rsqrtf(sq / float(HD) + a.eps);
    if (!is_v) {
#pragma unroll
      for (int p = 0; p < 4; ++p) {
        const float2 g = __bfloat1622float2(w.pair[p]);
        const float2 n = __bfloat1622float2(__floats2bfloat162_rn(f[2 * p] * inv, f[2 * p + 1] * inv));
        const float2 o = __bfloat1622float2(__floats2bfloat162_rn(g.x * n.x, g.y * n.y));
        f[2 * p] = o.x;
        f[2 * p + 1] = o.y;
      }
    }
  }
  // Rope: lower half x0·c − x1·s, upper half x1·c + x0·s (own value first), rounded as rope_kernel.
  const bool lower = j < G / 2;
  float r[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const float partner = __shfl_xor_sync(0xffffffffu, f[e], G / 2);
    float s, c;
    sincosf(pos * freq[e], &s, &c);
    c = round_bf16(c * a.scaling);
    s = round_bf16(s * a.scaling);
    r[e] = round_bf16(f[e] * c) + round_bf16((lower ? -partner : partner) * s);
  }
  if (!active) return;
  if (is_v) {
    if (slot >= 0) {
      const int64_t dst = ((slot / a.block_size * a.kv_heads + kvh) * a.block_size + slot % a.block_size) * HD + 8 * j;
      *reinterpret_cast<uint4*>(a.v_cache + dst) = u.raw;
    }
    return;
  }
  store_bf16x8(x + 8 * j, r);
  if (!is_q && slot >= 0) {
    const int64_t dst = ((slot / a.block_size * a.kv_heads + kvh) * a.block_size + slot % a.block_size) * HD + 8 * j;
    store_bf16x8(a.k_cache + dst, r);
  }
}

template <int HD>
void launch_fused(const FusedArgs& a, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t threads = a.tokens * (a.q_heads + 2 * a.kv_heads) * (HD / 8);
  launch_pdl(qk_norm_rope_kv_write_kernel<HD>, dim3(unsigned((threads + kThreads - 1) / kThreads)), dim3(kThreads), 0,
             stream, a);
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

void qk_norm_rope_kv_write(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor* q_norm, const Tensor* k_norm,
                           float eps, const Tensor& positions, const Tensor& inv_freq, float attention_scaling,
                           const Tensor& slots, const Tensor& k_cache, const Tensor& v_cache, cudaStream_t stream) {
  const char* op = "qk_norm_rope_kv_write";
  detail::check_rope_args(op, q, k, positions, inv_freq, Device::cuda);
  detail::check_kv_write_args(op, k, v, slots, k_cache, v_cache, Device::cuda);
  const int64_t hd = q.size(2);
  MXMOE_CHECK(hd == 64 || hd == 128 || hd == 256, op, ": head_dim ", hd, " is not supported (64, 128 or 256)");
  MXMOE_CHECK((q_norm == nullptr) == (k_norm == nullptr), op, ": give both QK-norm weights or neither");
  for (const Tensor* w : {q_norm, k_norm}) {
    MXMOE_CHECK(!w || (w->dtype() == DType::bf16 && w->device() == Device::cuda && w->is_contiguous() &&
                       w->numel() == hd),
                op, ": QK-norm weights must be contiguous bf16 [", hd, "] on the GPU");
  }
  const TokenRows qr = token_rows(q, op), kr = token_rows(k, op), vr = token_rows(v, op);
  for (const auto& [t, r] : {std::pair{&q, qr}, std::pair{&k, kr}, std::pair{&v, vr}}) {
    MXMOE_CHECK(reinterpret_cast<uintptr_t>(t->data()) % 16 == 0 && r.stride % 8 == 0, op,
                ": q, k and v rows must be 16-byte aligned");
  }
  if (qr.tokens == 0) return;
  const FusedArgs a{q.data_as<__nv_bfloat16>(), k.data_as<__nv_bfloat16>(), v.data_as<const __nv_bfloat16>(),
                    qr.stride, kr.stride, vr.stride,
                    q_norm ? q_norm->data_as<const __nv_bfloat16>() : nullptr,
                    k_norm ? k_norm->data_as<const __nv_bfloat16>() : nullptr, eps, attention_scaling,
                    positions.data_as<const int32_t>(), inv_freq.data_as<const float>(), slots.data_as<const int32_t>(),
                    k_cache.data_as<__nv_bfloat16>(), v_cache.data_as<__nv_bfloat16>(), qr.tokens, int(q.size(1)),
                    int(k.size(1)), int(k_cache.size(2))};
  switch (hd) {
    case 64: return launch_fused<64>(a, stream);
    case 128: return launch_fused<128>(a, stream);
    default: return launch_fused<256>(a, stream);
  }
}

}  // namespace mxmoe
