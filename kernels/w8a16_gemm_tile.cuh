#pragma once
// Explicit tile-width variants of the W8A16 / bf16 tensor-core GEMMs (kernels/w8a16_gemm.h), for
// tests (every variant is checked) and benchmarks (variants are compared). The public functions
// use GemmTileN::automatic, which picks by shape.
#include "kernels/w8a16_gemm.h"

namespace mxmoe {

// n128 / n256 / m256: 128 x 128, 128 x 256 or 256 x 128 tiles of y, one CTA of 2 warpgroups per
// SM; m256_4wg: 256 x 128 with 4 warpgroups (more warps to hide latency, <= 128 registers);
// n128_2cta: 128 x 128 tiles, two CTAs per SM (shallower pipeline, fewer registers).
enum class GemmTileN : int { automatic, n128, n256, m256, m256_4wg, n128_2cta };

void w8a16_gemm(const Tensor& x, const MxTensor& w, const Tensor* bias, const Tensor& y, cudaStream_t stream,
                GemmTileN tile);
void w8a16_grouped_gemm(const Tensor& x, const MxTensor& w, const Tensor& offsets, const Tensor& y,
                        cudaStream_t stream, GemmTileN tile);
void bf16_grouped_gemm(const Tensor& x, const Tensor& w, const Tensor& offsets, const Tensor& y, cudaStream_t stream,
                       GemmTileN tile);

}  // namespace mxmoe
