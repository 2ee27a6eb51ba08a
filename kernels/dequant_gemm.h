#pragma once
// The portable MXFP8 linear: dequantize W to a bf16 scratch, then cuBLASLt bf16.
// y[M, N] = x[M, K] · W[N, K]ᵀ (+ bias[N]); x, y, bias bf16. It reads the fp8 weight, writes and
// re-reads it in bf16 (5 bytes per weight instead of 1), so it is a fallback and a benchmark
// comparison, not the fast path. The bf16 copy lives in a StreamScratch (kernels/cublaslt_gemm.h).
#include <cuda_runtime.h>

#include "engine/tensor.h"
#include "kernels/mxfp8.h"

namespace mxmoe {

void dequant_gemm(const Tensor& x, const MxTensor& w, const Tensor* bias, const Tensor& y, cudaStream_t stream);

}  // namespace mxmoe
