// SiLU-gated activation: one thread per 8 outputs, 16-byte loads and stores. Launched with
// programmatic dependent launch (kernels/pdl.cuh): the input is an activation, read after the wait.
#include "kernels/activation.h"
#include "kernels/bf16_vec.cuh"
#include "kernels/pdl.cuh"
#include "kernels/token_rows.h"

namespace mxmoe {

namespace {

__global__ void silu_mul_kernel(const __nv_bfloat16* gate_up, int64_t in_stride, __nv_bfloat16* out,
                                int64_t out_stride, int64_t tokens, int64_t inter) {
  const int64_t chunks = inter / 8;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= tokens * chunks) return;
  grid_dependency_wait();
  launch_dependents();
  const int64_t t = idx / chunks, i = (idx % chunks) * 8;
  float g[8], u[8];
  load_bf16x8(gate_up + t * in_stride + i, g);
  load_bf16x8(gate_up + t * in_stride + inter + i, u);
#pragma unroll
  for (int j = 0; j < 8; ++j) g[j] = round_bf16(g[j] / (1.f + expf(-g[j]))) * u[j];
  store_bf16x8(out + t * out_stride + i, g);
}

}  // namespace

void silu_mul(const Tensor& gate_up, const Tensor& out, cudaStream_t stream) {
  const int64_t inter = detail::check_silu_mul_args("silu_mul", gate_up, out, Device::cuda);
  const TokenRows g = token_rows(gate_up, "gate_up"), o = token_rows(out, "out");
  MXMOE_CHECK(reinterpret_cast<uintptr_t>(gate_up.data()) % 16 == 0 && reinterpret_cast<uintptr_t>(out.data()) % 16 == 0 &&
                  g.stride % 8 == 0 && o.stride % 8 == 0,
              "silu_mul: rows must be 16-byte aligned");
  const int64_t work = g.tokens * (inter / 8);
  if (work == 0) return;
  constexpr int kThreads = 256;
  launch_pdl(silu_mul_kernel, dim3(unsigned((work + kThreads - 1) / kThreads)), dim3(kThreads), 0, stream,
             gate_up.data_as<const __nv_bfloat16>(), g.stride, out.data_as<__nv_bfloat16>(), o.stride, g.tokens, inter);
}

}  // namespace mxmoe
