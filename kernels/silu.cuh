#pragma once
// SiLU in fp32, shared by every kernel that forms SiLU(gate) · up: the MoE decode gate/up kernel,
// the gated grouped GEMM's epilogue and the prefill silu_mul pass.

namespace mxmoe {

// The fast divide (one reciprocal): below v = -87, e^-v overflows and the quotient is -0, as it
// should be to within the product's rounding.
__device__ __forceinline__ float silu(float v) { return __fdividef(v, 1.f + __expf(-v)); }

}  // namespace mxmoe
