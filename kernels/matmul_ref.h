#pragma once
// CPU reference of a linear layer, the oracle for every GEMM/GEMV kernel:
//   y[M, N] = x[M, K] · W[N, K]ᵀ (+ bias[N]), accumulated in double.
// x: f32/bf16/f16. W: f32/bf16/f16, or MXFP8 (dequantized exactly). bias: f32/bf16. y: f32 or bf16 (RNE).
#include "engine/tensor.h"
#include "kernels/mxfp8.h"

namespace mxmoe {

void matmul_ref(const Tensor& x, const Tensor& w, const Tensor* bias, const Tensor& y);
void matmul_ref(const Tensor& x, const MxTensor& w, const Tensor* bias, const Tensor& y);

// Values of any float tensor on the CPU (f32/bf16/f16/e4m3), in order, as f32.
std::vector<float> to_f32_vector(const Tensor& t);
// Writes f32 values into a CPU tensor of dtype f32/bf16/f16 (RNE).
void from_f32_vector(const std::vector<float>& values, const Tensor& t);

}  // namespace mxmoe
