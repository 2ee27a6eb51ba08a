#pragma once
// Decode-size (1 <= M <= 16) weight-only W8A16 linear: bandwidth-bound, reads each fp8 weight
// and its e8m0 scale once. x, y, bias bf16; fp32 accumulation.
#include <cuda_runtime.h>

#include "engine/tensor.h"
#include "kernels/mxfp8.h"

namespace mxmoe {

constexpr int64_t kGemvMaxM = 16;

// y[M, N] = x[M, K] · W[N, K]ᵀ (+ bias[N]).
void w8a16_gemv(const Tensor& x, const MxTensor& w, const Tensor* bias, const Tensor& y, cudaStream_t stream);

}  // namespace mxmoe
