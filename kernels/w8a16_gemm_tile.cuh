#pragma once
// Explicit tile variants of the W8A16 / bf16 tensor-core GEMMs (kernels/w8a16_gemm.h), for
// tests (every variant is checked) and benchmarks (variants are compared). The public functions
// use GemmTile::automatic, which picks by shape.
#include "kernels/w8a16_gemm.h"

namespace mxmoe {

// The TMA / register-A kernel (kernels/w8a16_gemm_rs.cuh; MXFP8 weights only):
//  rs_t256: 256 tokens (y rows) x 128 W rows (y columns) per CTA, 5 stages.
//  rs_t256_pair: the same in clusters of 2 CTAs that share the x tile (TMA multicast; slower).
//  rs_t128: 128 x 128, 8 stages: half the tile, for small groups and finer waves.
// The all-threads cp.async kernel (kernels/w8a16_gemm_kernel.cuh; MXFP8 and bf16 weights):
//  m256_4wg: 256 x 128 tiles of y, one CTA of 4 warpgroups per SM, 4-8 pipeline stages.
//  n128_2cta: 128 x 128 tiles, two CTAs of 2 warpgroups per SM (3 stages): finer waves.
// (Measured and dropped: 128x128 / 128x256 / 256x128 with one CTA of 2 warpgroups, all slower.)
enum class GemmTile : int { automatic, rs_t256_pair, rs_t256, rs_t128, m256_4wg, n128_2cta };

void w8a16_gemm(const Tensor& x, const MxTensor& w, const Tensor* bias, const Tensor& y, cudaStream_t stream,
                GemmTile tile);
void w8a16_grouped_gemm(const Tensor& x, const MxTensor& w, const Tensor& offsets, const Tensor& y,
                        cudaStream_t stream, GemmTile tile);
void bf16_grouped_gemm(const Tensor& x, const Tensor& w, const Tensor& offsets, const Tensor& y, cudaStream_t stream,
                       GemmTile tile);
// rs_t256 or rs_t128 only (the gated epilogue lives in the register-A kernel).
void w8a16_grouped_gemm_silu_mul(const Tensor& x, const MxTensor& w13, const Tensor& offsets, const Tensor& act,
                                 cudaStream_t stream, GemmTile tile);

}  // namespace mxmoe
