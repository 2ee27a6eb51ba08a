#include <cuda_bf16.h>

#include <algorithm>

#include "kernels/gated_add.h"
#include "kernels/pdl.cuh"

namespace mxmoe {

namespace {

__global__ void gated_add_kernel(__nv_bfloat16* __restrict__ out, const __nv_bfloat16* __restrict__ x,
                                 const float* __restrict__ gate, int64_t h, int64_t total) {
  grid_dependency_wait();  // programmatic dependent launch: every input is an activation
  launch_dependents();
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = __bfloat162float(__float2bfloat16_rn(gate[i / h]));
    const float s = __bfloat162float(__float2bfloat16_rn(1.f / (1.f + expf(-g))));
    const float p = __bfloat162float(__float2bfloat16_rn(s * __bfloat162float(x[i])));
    out[i] = __float2bfloat16_rn(__bfloat162float(out[i]) + p);
  }
}

}  // namespace

void add_sigmoid_gated(const Tensor& out, const Tensor& x, const Tensor& gate, cudaStream_t stream) {
  detail::check_gated_add_args("add_sigmoid_gated", out, x, gate, Device::cuda);
  const int64_t total = out.numel();
  if (total == 0) return;
  const int blocks = int(std::min<int64_t>((total + 255) / 256, 4096));
  launch_pdl(gated_add_kernel, dim3(blocks), dim3(256), 0, stream, out.data_as<__nv_bfloat16>(),
             x.data_as<const __nv_bfloat16>(), gate.data_as<const float>(), out.size(1), total);
}

}  // namespace mxmoe
