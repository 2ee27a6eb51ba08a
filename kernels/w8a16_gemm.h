#pragma once
// Prefill-size (large M) weight-only W8A16 GEMMs on tensor cores (Hopper): MXFP8 weights are
// dequantized to bf16 on chip, activations are bf16, accumulation is fp32. They need an sm_90 GPU
// (wgmma); elsewhere they throw mxmoe::Error. Asynchronous on `stream`, no host sync.
#include <cuda_runtime.h>

#include "engine/tensor.h"
#include "kernels/mxfp8.h"

namespace mxmoe {

// y[M, N] = x[M, K] · W[N, K]ᵀ (+ bias[N]); x, y, bias bf16 row-major; K % 32 == 0; any M, N >= 1.
void w8a16_gemm(const Tensor& x, const MxTensor& w, const Tensor* bias, const Tensor& y, cudaStream_t stream);

// Grouped (MoE prefill): W [G, N, K]; rows [offsets[g], offsets[g+1]) of x and y use W_g.
// offsets: device i32 [G+1], offsets[0] = 0, offsets[G] = M, read on the device (no host sync,
// capturable in a CUDA graph). Groups may be empty.
void w8a16_grouped_gemm(const Tensor& x, const MxTensor& w, const Tensor& offsets, const Tensor& y,
                        cudaStream_t stream);
// Grouped gate/up with the activation (MoE prefill): W13 [G, 2I, K], gate rows then up rows;
// act[rows of g, I] = SiLU(x · gate_gᵀ) ⊙ (x · up_gᵀ), the products in fp32 and act rounded to
// bf16 once (as the decode kernels do). The [rows, 2I] product is never stored.
void w8a16_grouped_gemm_silu_mul(const Tensor& x, const MxTensor& w13, const Tensor& offsets, const Tensor& act,
                                 cudaStream_t stream);
// The same with bf16 weights W [G, N, K] (the bf16 fused-MoE path).
void bf16_grouped_gemm(const Tensor& x, const Tensor& w, const Tensor& offsets, const Tensor& y, cudaStream_t stream);

}  // namespace mxmoe
