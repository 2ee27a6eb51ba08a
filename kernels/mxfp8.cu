// CUDA MXFP8 quantize / dequantize / scale swizzle. Memory-bound: each thread moves one 16-byte
// vector per step and a 32-element block is shared by 4 (16-bit input) or 8 (f32) lanes that
// reduce their amax with shuffles. Bit-exact with kernels/mxfp8_ref.cpp.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>

#include "engine/cuda_check.h"
#include "engine/gpu_info.h"
#include "kernels/mxfp8.h"

namespace mxmoe {

namespace {

constexpr int kThreads = 256;

int grid_for(int64_t threads) { return grid_stride_blocks(threads, kThreads); }

template <class T> __device__ float to_f32(T v);
template <> __device__ float to_f32(float v) { return v; }
template <> __device__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ float to_f32(__half v) { return __half2float(v); }

// Bytes of e4m3 one thread writes: one per input element.
template <int N> struct PackedBytes;
template <> struct PackedBytes<4> { using type = uint32_t; };
template <> struct PackedBytes<8> { using type = uint2; };

template <class T>
__global__ void __launch_bounds__(kThreads) quantize_kernel(const T* __restrict__ x, uint8_t* __restrict__ elems,
                                                            uint8_t* __restrict__ scales, int64_t n_blocks,
                                                            ScaleRule rule, int* nonfinite_count) {
  constexpr int kPerThread = 16 / sizeof(T);              // one 16-byte load
  constexpr int kLanesPerBlock = kMxBlock / kPerThread;   // 4 (bf16/f16) or 8 (f32)
  using Packed = typename PackedBytes<kPerThread>::type;
  const int64_t n_threads = n_blocks * kLanesPerBlock;
  const int lane = threadIdx.x & 31;
  int nonfinite = 0;
  // Warp-uniform grid-stride loop, so every shuffle sees the whole warp.
  for (int64_t base = int64_t(blockIdx.x) * blockDim.x + (threadIdx.x & ~31); base < n_threads;
       base += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = base + lane;
    const bool active = t < n_threads;
    union { uint4 raw; T v[kPerThread]; } in;
    in.raw = active ? __ldcs(reinterpret_cast<const uint4*>(x) + t) : make_uint4(0, 0, 0, 0);
    float v[kPerThread];
    float amax = 0.f;
    int bad = 0;
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      v[i] = to_f32(in.v[i]);
      bad += !isfinite(v[i]);
      amax = fmaxf(amax, fabsf(v[i]));
    }
    nonfinite += bad;
#pragma unroll
    for (int off = 1; off < kLanesPerBlock; off <<= 1) {
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
      bad |= __shfl_xor_sync(0xffffffffu, bad, off);
    }
    if (!active) continue;
    const uint8_t s = bad ? kE8M0Nan : e8m0_scale(amax, rule);
    union { Packed word; __nv_fp8x2_storage_t pair[kPerThread / 2]; } out;
    if (bad) {
#pragma unroll
      for (int i = 0; i < kPerThread / 2; ++i) out.pair[i] = kE4M3Nan | kE4M3Nan << 8;
    } else {
      const float inv = e8m0_inverse(s);
#pragma unroll
      for (int i = 0; i < kPerThread / 2; ++i)
        out.pair[i] = __nv_cvt_float2_to_fp8x2(make_float2(v[2 * i] * inv, v[2 * i + 1] * inv), __NV_SATFINITE, __NV_E4M3);
    }
    reinterpret_cast<Packed*>(elems)[t] = out.word;
    if (lane % kLanesPerBlock == 0) scales[t / kLanesPerBlock] = s;
  }
  if (nonfinite_count && nonfinite) atomicAdd(nonfinite_count, nonfinite);
}

// Each thread: 8 elements (8 bytes in, 8 outputs), all within one 32-element block.
template <class Out>
__global__ void __launch_bounds__(kThreads) dequantize_kernel(const uint8_t* __restrict__ elems,
                                                              const uint8_t* __restrict__ scales,
                                                              Out* __restrict__ out, int64_t n_threads) {
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < n_threads; t += int64_t(gridDim.x) * blockDim.x) {
    const uint2 packed = reinterpret_cast<const uint2*>(elems)[t];
    const float scale = e8m0_value(scales[t / (kMxBlock / 8)]);
    const uint8_t* bytes = reinterpret_cast<const uint8_t*>(&packed);
    if constexpr (sizeof(Out) == 4) {
      float4 lo, hi;
      lo = make_float4(e4m3_to_f32(bytes[0]) * scale, e4m3_to_f32(bytes[1]) * scale, e4m3_to_f32(bytes[2]) * scale,
                       e4m3_to_f32(bytes[3]) * scale);
      hi = make_float4(e4m3_to_f32(bytes[4]) * scale, e4m3_to_f32(bytes[5]) * scale, e4m3_to_f32(bytes[6]) * scale,
                       e4m3_to_f32(bytes[7]) * scale);
      reinterpret_cast<float4*>(out)[2 * t] = lo;
      reinterpret_cast<float4*>(out)[2 * t + 1] = hi;
    } else {
      union { uint4 raw; __nv_bfloat162 pair[4]; } o;
#pragma unroll
      for (int i = 0; i < 4; ++i)
        o.pair[i] = __floats2bfloat162_rn(e4m3_to_f32(bytes[2 * i]) * scale, e4m3_to_f32(bytes[2 * i + 1]) * scale);
      reinterpret_cast<uint4*>(out)[t] = o.raw;
    }
  }
}

// One thread per byte of the tiled layout (padding written as 0).
__global__ void swizzle_kernel(const uint8_t* __restrict__ scales, uint8_t* __restrict__ out, int64_t rows,
                               int64_t cols, int64_t padded_cols, int64_t tile, int64_t total) {
  for (int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; o < total; o += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = o / tile, within = o % tile;
    // Invert swizzled_scale_offset: 512-byte tiles of 128 rows x 4 columns, tiles row-major.
    const int64_t t = within / 512, byte = within % 512;
    const int64_t r = (t / (padded_cols / 4)) * 128 + ((byte % 16) / 4) * 32 + byte / 16;
    const int64_t c = (t % (padded_cols / 4)) * 4 + byte % 4;
    out[o] = (r < rows && c < cols) ? scales[(b * rows + r) * cols + c] : uint8_t(0);
  }
}

void check_cuda(const Tensor& t, const char* op) {
  MXMOE_CHECK(t.device() == Device::cuda, op, ": expects CUDA tensors");
}

}  // namespace

void mxfp8_quantize(const Tensor& x, const MxTensor& q, ScaleRule rule, cudaStream_t stream, int* nonfinite_count) {
  check_mxfp8_shapes(x, q, "mxfp8_quantize");
  check_cuda(x, "mxfp8_quantize");
  const int64_t n_blocks = x.numel() / kMxBlock;
  if (n_blocks == 0) return;
  auto* e = q.elems.data_as<uint8_t>();
  auto* s = q.scales.data_as<uint8_t>();
  switch (x.dtype()) {
    case DType::f32:
      quantize_kernel<<<grid_for(n_blocks * 8), kThreads, 0, stream>>>(x.data_as<const float>(), e, s, n_blocks, rule,
                                                                        nonfinite_count);
      break;
    case DType::bf16:
      quantize_kernel<<<grid_for(n_blocks * 4), kThreads, 0, stream>>>(x.data_as<const __nv_bfloat16>(), e, s,
                                                                        n_blocks, rule, nonfinite_count);
      break;
    default:
      quantize_kernel<<<grid_for(n_blocks * 4), kThreads, 0, stream>>>(x.data_as<const __half>(), e, s, n_blocks,
                                                                        rule, nonfinite_count);
  }
  CUDA_CHECK_LAUNCH();
}

void mxfp8_dequantize(const MxTensor& q, const Tensor& out, cudaStream_t stream) {
  check_mxfp8_shapes(out, q, "mxfp8_dequantize");
  check_cuda(out, "mxfp8_dequantize");
  MXMOE_CHECK(out.dtype() == DType::f32 || out.dtype() == DType::bf16,
              "mxfp8_dequantize: output must be f32 or bf16, got ", dtype_name(out.dtype()));
  const int64_t n_threads = out.numel() / 8;
  if (n_threads == 0) return;
  const auto* e = q.elems.data_as<const uint8_t>();
  const auto* s = q.scales.data_as<const uint8_t>();
  if (out.dtype() == DType::f32)
    dequantize_kernel<<<grid_for(n_threads), kThreads, 0, stream>>>(e, s, out.data_as<float>(), n_threads);
  else
    dequantize_kernel<<<grid_for(n_threads), kThreads, 0, stream>>>(e, s, out.data_as<__nv_bfloat16>(), n_threads);
  CUDA_CHECK_LAUNCH();
}

void mxfp8_swizzle_scales(const Tensor& scales, const Tensor& out, cudaStream_t stream) {
  check_cuda(scales, "mxfp8_swizzle_scales");
  MXMOE_CHECK(out.shape() == swizzled_scales_shape(scales.shape()) && scales.is_contiguous() && out.is_contiguous() &&
                  out.device() == Device::cuda,
              "mxfp8_swizzle_scales: scales ", shape_str(scales.shape()), " -> out ", shape_str(out.shape()),
              ", expected ", shape_str(swizzled_scales_shape(scales.shape())));
  const int64_t rows = scales.size(-2), cols = scales.size(-1);
  const int64_t padded_cols = round_up(cols, 4);
  const int64_t total = out.numel();
  if (total == 0) return;
  swizzle_kernel<<<grid_for(total), kThreads, 0, stream>>>(scales.data_as<const uint8_t>(), out.data_as<uint8_t>(),
                                                           rows, cols, padded_cols, round_up(rows, 128) * padded_cols,
                                                           total);
  CUDA_CHECK_LAUNCH();
}

void mxfp8_quantize_weight(const Tensor& w, const MxTensor& q, ScaleRule rule, cudaStream_t stream,
                           const std::string& name) {
  Tensor count = Tensor::empty({1}, DType::i32, Device::cuda);
  CUDA_CHECK(cudaMemsetAsync(count.data(), 0, sizeof(int), stream));
  mxfp8_quantize(w, q, rule, stream, count.data_as<int>());
  int nonfinite = 0;
  CUDA_CHECK(cudaMemcpyAsync(&nonfinite, count.data(), sizeof(int), cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  MXMOE_CHECK(nonfinite == 0, "weight ", name, " ", shape_str(w.shape()), " holds ", nonfinite,
              " NaN/Inf value(s); refusing to quantize it");
}

}  // namespace mxmoe
