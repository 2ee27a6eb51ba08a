#pragma once
// Decode-size (1 <= M <= 32) weight-only W8A16 linear: bandwidth-bound, reads each fp8 weight
// and its e8m0 scale once. x, y, bias bf16; fp32 accumulation. Measured on H100 (bench-linear, one
// run) at M = 32 it beats dequantize + cuBLASLt and the tensor-core GEMM on every real shape (Qwen3
// qkv 11.9 vs 21.2 us, o_proj 14.4 vs 19.1, Mixtral w2 81.8 vs 119.4); at M = 64, in two passes over
// the weights, it lost on every one (qkv 23.3 vs 20.6, Mixtral w2 161.8 vs 120.8).
#include <cuda_runtime.h>

#include "engine/tensor.h"
#include "kernels/mxfp8.h"

namespace mxmoe {

constexpr int64_t kGemvMaxM = 32;

// Launch choices of the decode kernels (w8a16_gemv, moe_*_decode in kernels/moe_decode.h). The
// defaults are the ones measured best (bench-gemv); tests and benchmarks override them to cover
// and compare every path.
struct DecodeTuning {
  int splits = 0;  // split-K: blocks (one cluster) sharing a tile group's K range, 1..16; 0: by shape
  // Programmatic dependent launch: the kernel may start while the previous kernel on the stream
  // finishes, prefetching weights (never written by that previous kernel) before it waits for it.
  // The MoE kernels use it only when their grid fits the GPU at once (gate/up is routed by the
  // previous kernel's output and waits first; down prefetches its experts' weights).
  bool programmatic_launch = true;
};

// y[M, N] = x[M, K] · W[N, K]ᵀ (+ bias[N]).
void w8a16_gemv(const Tensor& x, const MxTensor& w, const Tensor* bias, const Tensor& y, cudaStream_t stream,
                const DecodeTuning& tuning = {});

}  // namespace mxmoe
