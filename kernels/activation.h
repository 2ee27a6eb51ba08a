#pragma once
// Gated activation of dense MLPs (Llama/Qwen act_fn(gate_proj(x)) * up_proj(x) with SiLU), on
// the fused gate_up projection output, in Hugging Face's bf16 order:
//   s = bf16(silu(gate)),  out = bf16(s · up)          (silu(g) = g / (1 + e^-g) in fp32)
// gate_up: bf16 token rows [T, 2I] (gate columns first, then up; dimension 0 may be strided);
// out: bf16 [T, I], I % 8 == 0. Asynchronous on `stream`, capturable in a CUDA graph.
#include <cuda_runtime.h>

#include "engine/tensor.h"

namespace mxmoe {

void silu_mul(const Tensor& gate_up, const Tensor& out, cudaStream_t stream);
void silu_mul_ref(const Tensor& gate_up, const Tensor& out);  // CPU tensors

namespace detail {
int64_t check_silu_mul_args(const char* op, const Tensor& gate_up, const Tensor& out, Device device);  // returns I
}  // namespace detail

}  // namespace mxmoe
