// CUDA dtype conversion and dummy-weight fill; bit-exact with kernels/convert_ref.cpp for
// finite values. Memory-bound element-wise kernels (grid-stride, one element per step): they
// run at device bandwidth, far above the host->device copy that feeds them while loading.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <type_traits>

#include "engine/cuda_check.h"
#include "engine/gpu_info.h"
#include "kernels/convert.h"

namespace mxmoe {

namespace {

constexpr int kThreads = 256;

int grid_for(int64_t threads) { return grid_stride_blocks(threads, kThreads); }

__device__ float load(float v) { return v; }
__device__ float load(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ float load(__half v) { return __half2float(v); }

template <class T> __device__ T store(float v);
template <> __device__ float store(float v) { return v; }
template <> __device__ __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __half store(float v) { return __float2half_rn(v); }

// Out = void: count only.
template <class In, class Out>
__global__ void __launch_bounds__(kThreads) convert_kernel(const In* __restrict__ src, Out* __restrict__ dst,
                                                           int64_t n, int* nonfinite_count) {
  int bad = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = load(src[i]);
    bad += !isfinite(v);
    if constexpr (!std::is_void_v<Out>) dst[i] = store<Out>(v);
  }
  if (!nonfinite_count) return;
  for (int off = 16; off > 0; off >>= 1) bad += __shfl_xor_sync(0xffffffffu, bad, off);
  if ((threadIdx.x & 31) == 0 && bad) atomicAdd(nonfinite_count, bad);
}

template <class Out>
__global__ void __launch_bounds__(kThreads) fill_kernel(Out* __restrict__ dst, FillGeometry g, uint64_t seed,
                                                        float mean, float std, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t in = i % g.inner, l = (i / g.inner) % g.length, o = i / (g.inner * g.length);
    dst[i] = store<Out>(normal_at(seed, uint64_t((o * g.full + g.begin + l) * g.inner + in), mean, std));
  }
}

// Calls f(T{}) with T the CUDA element type of a float dtype.
template <class F>
void with_float_type(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::f32: f(float{}); break;
    case DType::bf16: f(__nv_bfloat16{}); break;
    case DType::f16: f(__half{}); break;
    default: fail(op, ": unsupported dtype ", dtype_name(t), " (f32/bf16/f16 only)");
  }
}

void check_cuda_contiguous(const Tensor& t, const char* op) {
  MXMOE_CHECK(t.device() == Device::cuda && t.is_contiguous(), op, ": needs a contiguous CUDA tensor, got ",
              shape_str(t.shape()));
}

}  // namespace

void convert_dtype(const Tensor& src, const Tensor& dst, cudaStream_t stream, int* nonfinite_count) {
  check_cuda_contiguous(src, "convert_dtype");
  check_cuda_contiguous(dst, "convert_dtype");
  MXMOE_CHECK(src.numel() == dst.numel(), "convert_dtype: ", src.numel(), " elements into ", dst.numel());
  const int64_t n = src.numel();
  if (n == 0) return;
  with_float_type(src.dtype(), "convert_dtype", [&](auto in) {
    with_float_type(dst.dtype(), "convert_dtype", [&](auto out) {
      using In = decltype(in);
      using Out = decltype(out);
      convert_kernel<<<grid_for(n), kThreads, 0, stream>>>(src.data_as<const In>(), dst.data_as<Out>(), n,
                                                             nonfinite_count);
    });
  });
  CUDA_CHECK_LAUNCH();
}

void count_nonfinite(const Tensor& x, cudaStream_t stream, int* nonfinite_count) {
  check_cuda_contiguous(x, "count_nonfinite");
  const int64_t n = x.numel();
  if (n == 0) return;
  with_float_type(x.dtype(), "count_nonfinite", [&](auto in) {
    using In = decltype(in);
    convert_kernel<In, void><<<grid_for(n), kThreads, 0, stream>>>(x.data_as<const In>(), nullptr, n,
                                                                   nonfinite_count);
  });
  CUDA_CHECK_LAUNCH();
}

void fill_normal(const Tensor& dst, const NormalFill& fill, cudaStream_t stream) {
  check_cuda_contiguous(dst, "fill_normal");
  const FillGeometry& g = fill.geometry;
  MXMOE_CHECK(g.outer * g.length * g.inner == dst.numel() && g.begin + g.length <= g.full,
              "fill_normal: geometry does not match ", shape_str(dst.shape()));
  const int64_t n = dst.numel();
  if (n == 0) return;
  with_float_type(dst.dtype(), "fill_normal", [&](auto out) {
    using Out = decltype(out);
    fill_kernel<<<grid_for(n), kThreads, 0, stream>>>(dst.data_as<Out>(), g, fill.seed, fill.mean, fill.std, n);
  });
  CUDA_CHECK_LAUNCH();
}

}  // namespace mxmoe
