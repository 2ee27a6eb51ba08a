#pragma once
// RMSNorm over the last `D` elements (D = weight.numel()), exactly in Hugging Face's order
// (LlamaRMSNorm / Qwen3MoeRMSNorm / OlmoeRMSNorm):
//   n   = bf16( x · rsqrt(mean(x²) + eps) )      x cast to fp32, mean in fp32
//   out = bf16( w · n )                          weight multiplied after the cast back
// The same call serves the QK-norm forms: Qwen3 norms each head (x [T, H, head_dim], weight
// [head_dim]: a row is one head); OLMoE norms the whole projection (weight [H·head_dim]).
//
// x, out: bf16 token rows [T, ...] (dimension 0 may be strided, see token_rows.h) whose width is
// a multiple of D; out may be x (in place). weight: bf16 [D], D % 8 == 0 (and D <= 16384 on the GPU:
// a row is held in registers).
//
// add_rmsnorm: the fused pre-norm step `residual = residual + x; out = norm(residual)`, with the
// sum rounded to bf16 first as Hugging Face does (it adds two bf16 tensors).
// residual [T, D] is updated in place; out [T, D].
//
// All CUDA entry points are asynchronous on `stream` and capturable in a CUDA graph. They launch
// with programmatic dependent launch (kernels/pdl.cuh) and read `weight` before waiting for the
// previous kernel on the stream: that kernel must not write it (weights are static).
#include <cuda_runtime.h>

#include "engine/tensor.h"

namespace mxmoe {

void rmsnorm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out, cudaStream_t stream);
void add_rmsnorm(const Tensor& residual, const Tensor& x, const Tensor& weight, float eps, const Tensor& out,
                 cudaStream_t stream);

// CPU references (CPU tensors; f32 math, the same two bf16 roundings).
void rmsnorm_ref(const Tensor& x, const Tensor& weight, float eps, const Tensor& out);
void add_rmsnorm_ref(const Tensor& residual, const Tensor& x, const Tensor& weight, float eps, const Tensor& out);

}  // namespace mxmoe

namespace mxmoe::detail {
// Validates the arguments shared by the CPU and CUDA versions; returns the row length D.
int64_t check_rmsnorm_args(const char* op, const Tensor& x, const Tensor& weight, const Tensor& out, Device device);
// The threads the CUDA kernels give one row of `vecs` 16-byte vectors when there are `rows` rows
// (a power of two; the row's sum of squares is reduced over them, so a kernel that norms a row in
// its prologue takes the same count to match rmsnorm bit for bit).
int rmsnorm_threads_per_row(int64_t rows, int64_t vecs);
}  // namespace mxmoe::detail
