#pragma once
// Qwen2-MoE's shared-expert combine: out[t, :] += sigmoid(gate[t]) · x[t, :], rounded as Hugging
// Face does on bf16 tensors: g = bf16(gate), s = bf16(sigmoid(g)), p = bf16(s · x), out = bf16(out + p).
// out, x: contiguous bf16 [T, H]; gate: f32 [T] or [T, 1] (the gate linear's output).
#include <cuda_runtime.h>

#include "engine/tensor.h"

namespace mxmoe {

void add_sigmoid_gated(const Tensor& out, const Tensor& x, const Tensor& gate, cudaStream_t stream);
void add_sigmoid_gated_ref(const Tensor& out, const Tensor& x, const Tensor& gate);  // CPU tensors

namespace detail {
void check_gated_add_args(const char* op, const Tensor& out, const Tensor& x, const Tensor& gate, Device device);
}  // namespace detail

}  // namespace mxmoe
