#pragma once
// MXFP8 quantization: x [..., K] (f32/bf16/f16) -> elements [..., K] e4m3 + scales [..., K/32] e8m0,
// dequantization, and conversion of scales to cuBLASLt's 128x4 tiled layout. Leading dimensions
// are flattened, so an expert stack [E, rows, K] is quantized in the same single launch.
//
// Each operation has a CPU reference (the test oracle) and a CUDA kernel that is bit-exact with it.
// NaN/Inf: a block holding one gets scale 0xFF (NaN) and NaN elements, so it dequantizes to NaN
// rather than to finite garbage; both versions also count the non-finite inputs, and weight
// quantization (mxfp8_quantize_weight) turns a nonzero count into an error naming the tensor.
// Activations are not checked (no host round trip): NaN propagates.
#include <cuda_runtime.h>

#include <string>

#include "engine/tensor.h"
#include "kernels/mxfp8_format.h"

namespace mxmoe {

struct MxTensor {
  Tensor elems;   // [..., K] e4m3
  Tensor scales;  // [..., K/32] e8m0
};

// Allocates the MXFP8 form of a tensor of `shape` (last dim = K, K % 32 == 0).
MxTensor mxfp8_empty(const Shape& shape, Device device);

// Shape of the tiled scales for [..., rows, cols] scales: [..., round_up(rows,128)·round_up(cols,4)].
Shape swizzled_scales_shape(const Shape& scales_shape);

// ---- CPU reference ----
int64_t mxfp8_quantize_ref(const Tensor& x, const MxTensor& out, ScaleRule rule);  // returns non-finite count
void mxfp8_dequantize_ref(const MxTensor& q, const Tensor& out);                   // out f32 or bf16
void mxfp8_swizzle_scales_ref(const Tensor& scales, const Tensor& out);

// ---- CUDA (asynchronous on `stream`) ----
// nonfinite_count: optional device int incremented by the number of NaN/Inf inputs.
void mxfp8_quantize(const Tensor& x, const MxTensor& out, ScaleRule rule, cudaStream_t stream,
                    int* nonfinite_count = nullptr);
void mxfp8_dequantize(const MxTensor& q, const Tensor& out, cudaStream_t stream);
void mxfp8_swizzle_scales(const Tensor& scales, const Tensor& out, cudaStream_t stream);

// Quantizes a weight and synchronizes `stream`; NaN/Inf in it throws an Error naming `name`.
void mxfp8_quantize_weight(const Tensor& w, const MxTensor& out, ScaleRule rule, cudaStream_t stream,
                           const std::string& name);

// Shared argument checks (name is used in messages).
void check_mxfp8_shapes(const Tensor& x, const MxTensor& q, const char* op);

}  // namespace mxmoe
