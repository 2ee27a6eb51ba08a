#pragma once
// Explicit tile variants of the W8A16 / bf16 tensor-core GEMMs (kernels/w8a16_gemm.h), for
// tests (every variant is checked) and benchmarks (variants are compared). The public functions
// use GemmTile::automatic, which picks by shape.
#include "kernels/w8a16_gemm.h"

namespace mxmoe {

// m256_4wg: 256 x 128 tiles of y, one CTA of 4 warpgroups per SM, 4-8 pipeline stages.
// n128_2cta: 128 x 128 tiles, two CTAs of 2 warpgroups per SM (3 stages): finer waves.
// (Measured and dropped: 128x128 / 128x256 / 256x128 with one CTA of 2 warpgroups, all slower.)
enum class GemmTile : int { automatic, m256_4wg, n128_2cta };

void w8a16_gemm(const Tensor& x, const MxTensor& w, const Tensor* bias, const Tensor& y, cudaStream_t stream,
                GemmTile tile);
void w8a16_grouped_gemm(const Tensor& x, const MxTensor& w, const Tensor& offsets, const Tensor& y,
                        cudaStream_t stream, GemmTile tile);
void bf16_grouped_gemm(const Tensor& x, const Tensor& w, const Tensor& offsets, const Tensor& y, cudaStream_t stream,
                       GemmTile tile);

}  // namespace mxmoe
