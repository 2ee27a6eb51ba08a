// Decode-size W8A16 linear: y[M, N] = x[M, K] · W[N, K]ᵀ (+ bias) for M <= 32 on the tile machinery of
// kernels/w8a16_dot.cuh (16 weight rows per warp, tensor cores, split-K across a cluster when N alone
// does not fill the SMs).
#include "kernels/w8a16_gemv.h"

#include "kernels/w8a16_dot.cuh"

namespace mxmoe {

namespace {

using namespace w8a16;

template <int NT>
struct DenseGemv {
  using Weights = Fp8Rows;
  static constexpr int kNTiles = NT;
  static constexpr bool kJobsBeforeWait = true;  // the weights and tiles are fixed by the shape
  static constexpr bool kRouted = false;
  Plan plan;
  int64_t k;
  Fp8Rows w;                  // [N, K]
  const __nv_bfloat16* x;     // [M, K]
  const __nv_bfloat16* bias;  // [N] or null
  __nv_bfloat16* y;           // [M, N]
  int m;
  int64_t n;

  __device__ const int* route() const { return nullptr; }
  __device__ bool job(int index, Job<Fp8Rows>& j, const int*) const {
    j = {w, index, m, 0};
    return true;
  }
  __device__ int64_t row(const Job<Fp8Rows>&, int tile, int r) const {
    const int64_t row = int64_t(tile) * kTileRows + r;
    return row < n ? row : -1;
  }
  __device__ const __nv_bfloat16* x_row(const Job<Fp8Rows>&, int token) const { return x + token * k; }
  __device__ void store(const Job<Fp8Rows>& j, int tile, int g, int t, int m0, const float (&acc)[NT][4]) const {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t r = row(j, tile, g + 8 * half);
      if (r < 0) continue;
      const float b = bias ? __bfloat162float(bias[r]) : 0.f;
#pragma unroll
      for (int h = 0; h < NT; ++h)
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const int token = m0 + h * 8 + 2 * t + i;
          if (token < m) y[token * n + r] = __float2bfloat16(acc[h][2 * half + i] + b);
        }
    }
  }
};

template <int NT>
void run(const Tensor& x, const MxTensor& w, const Tensor* bias, const Tensor& y, cudaStream_t stream,
         const DecodeTuning& tuning) {
  const int64_t m = x.size(0), n = w.elems.size(0), k = x.size(1);
  DenseGemv<NT> p;
  p.k = k;
  p.w = {w.elems.data_as<const uint8_t>(), w.scales.data_as<const uint8_t>(), k};
  p.x = x.data_as<const __nv_bfloat16>();
  p.bias = bias ? bias->data_as<const __nv_bfloat16>() : nullptr;
  p.y = y.data_as<__nv_bfloat16>();
  p.m = int(m);
  p.n = n;
  const int64_t groups = (n + kWarps * kTileRows - 1) / (kWarps * kTileRows);
  p.plan = make_plan<decltype(p)>(groups, k, int(m), tuning);
  launch(p, groups, stream);
}

}  // namespace

void w8a16_gemv(const Tensor& x, const MxTensor& w, const Tensor* bias, const Tensor& y, cudaStream_t stream,
                const DecodeTuning& tuning) {
  MXMOE_CHECK(x.dim() == 2 && x.dtype() == DType::bf16, "w8a16_gemv: x must be bf16 [M, K], got ",
              dtype_name(x.dtype()), " ", shape_str(x.shape()));
  MXMOE_CHECK(w.elems.dim() == 2 && w.elems.dtype() == DType::e4m3 && w.scales.dtype() == DType::e8m0,
              "w8a16_gemv: W must be MXFP8 [N, K], got ", shape_str(w.elems.shape()));
  const int64_t m = x.size(0), k = x.size(1), n = w.elems.size(0);
  MXMOE_CHECK(w.elems.size(1) == k, "w8a16_gemv: W ", shape_str(w.elems.shape()), " does not match x ",
              shape_str(x.shape()));
  MXMOE_CHECK(k > 0 && k % kMxBlock == 0, "w8a16_gemv: K = ", k, " is not a positive multiple of ", kMxBlock);
  MXMOE_CHECK(w.scales.shape() == Shape({n, k / kMxBlock}), "w8a16_gemv: scales ", shape_str(w.scales.shape()),
              " do not match W ", shape_str(w.elems.shape()));
  MXMOE_CHECK(m <= kGemvMaxM, "w8a16_gemv: M = ", m, " is above the decode limit ", kGemvMaxM,
              " (use w8a16_gemm)");
  MXMOE_CHECK(y.dtype() == DType::bf16 && y.shape() == Shape({m, n}), "w8a16_gemv: y must be bf16 ",
              shape_str({m, n}), ", got ", dtype_name(y.dtype()), " ", shape_str(y.shape()));
  MXMOE_CHECK(!bias || (bias->dtype() == DType::bf16 && bias->shape() == Shape({n}) && bias->is_contiguous() &&
                        bias->device() == Device::cuda),
              "w8a16_gemv: bias must be a contiguous CUDA bf16 [", n, "]");
  MXMOE_CHECK(x.is_contiguous() && y.is_contiguous() && w.elems.is_contiguous() && w.scales.is_contiguous(),
              "w8a16_gemv: tensors must be contiguous");
  MXMOE_CHECK(x.device() == Device::cuda && y.device() == Device::cuda && w.elems.device() == Device::cuda &&
                  w.scales.device() == Device::cuda,
              "w8a16_gemv: expects CUDA tensors");
  if (m == 0 || n == 0) return;
  // 8-token mma tiles: one pass over the weights for up to 32 tokens.
  if (m <= 8)
    run<1>(x, w, bias, y, stream, tuning);
  else if (m <= 16)
    run<2>(x, w, bias, y, stream, tuning);
  else
    run<4>(x, w, bias, y, stream, tuning);
}

}  // namespace mxmoe
