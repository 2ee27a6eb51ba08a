#pragma once
// The portable MXFP8 linear: dequantize W to a bf16 scratch, then cuBLASLt bf16.
// y[M, N] = x[M, K] · W[N, K]ᵀ (+ bias[N]); x, y, bias bf16. It reads the fp8 weight, writes and
// re-reads it in bf16 (5 bytes per weight instead of 1): the fallback on GPUs without our kernels,
// and on Hopper the faster path for some shapes (dequant_gemm_is_faster). The bf16 copy lives in a
// StreamScratch (kernels/cublaslt_gemm.h).
#include <cuda_runtime.h>

#include "engine/tensor.h"
#include "kernels/mxfp8.h"

namespace mxmoe {

void dequant_gemm(const Tensor& x, const MxTensor& w, const Tensor* bias, const Tensor& y, cudaStream_t stream);

// Whether dequant_gemm should beat w8a16_gemm (kernels/w8a16_gemm.h) on y[M, N] = x[M, K]·Wᵀ
// with `sms` SMs, by a cost model fitted to bench-linear on an H100 (both paths through
// LinearLayer::forward, weights out of L2, one run):
//   w8a16_gemm: ceil(tiles / sms) waves of K/64 steps, 0.8 us per step of a 128-token tile
//     (M <= 128), 1.1 us of a 256-token tile; tiles = ceil(M / tokens) · ceil(N / 128). Below a
//     wave (o_proj 4096->2048 at M = 128: 16 tiles, 52 us) most SMs idle.
//   dequant_gemm: 4 bytes per weight at 3 TB/s, then cuBLASLt bf16 at 750 TFLOP/s or at least
//     one read of the bf16 weight, + 3 us.
// It picks the faster measured path on 21 of the 24 shapes x M (qkv, o_proj, lm_head of
// Qwen3-30B-A3B; qkv, w1/w3, w2 of Mixtral; M = 128..4096); the three misses are the two
// lm_head rows above the scratch cap below and Mixtral qkv at M = 128 (54.9 vs 52.3 us).
// Never for a bf16 copy above 128 MB (an MXFP8 LM head): the scratch is outside the memory cap.
bool dequant_gemm_is_faster(int64_t m, int64_t n, int64_t k, int sms);

}  // namespace mxmoe
