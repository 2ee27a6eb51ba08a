// The cuBLASLt descriptors of kernels/cublaslt_gemm.h, read back attribute by attribute (building
// them needs no GPU): the block-scaled TN GEMM of the Blackwell (sm_100+) MXFP8 path, which has no
// hardware here, with the sizes of its tiled scale operands; bf16; and the FP8 per-tensor ceiling.
#include <gtest/gtest.h>

#include "kernels/cublaslt_gemm.h"

namespace mxmoe {
namespace {

template <class T>
T desc_attr(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr) {
  T value{};
  size_t written = 0;
  EXPECT_EQ(cublasLtMatmulDescGetAttribute(d, attr, &value, sizeof(value), &written), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(written, sizeof(value));
  return value;
}

template <class T>
T layout_attr(cublasLtMatrixLayout_t l, cublasLtMatrixLayoutAttribute_t attr) {
  T value{};
  size_t written = 0;
  EXPECT_EQ(cublasLtMatrixLayoutGetAttribute(l, attr, &value, sizeof(value), &written), CUBLAS_STATUS_SUCCESS);
  return value;
}

void expect_layout(cublasLtMatrixLayout_t l, cudaDataType_t type, uint64_t rows, uint64_t cols, int64_t ld) {
  EXPECT_EQ(layout_attr<int32_t>(l, CUBLASLT_MATRIX_LAYOUT_TYPE), int32_t(type));
  EXPECT_EQ(layout_attr<uint64_t>(l, CUBLASLT_MATRIX_LAYOUT_ROWS), rows);
  EXPECT_EQ(layout_attr<uint64_t>(l, CUBLASLT_MATRIX_LAYOUT_COLS), cols);
  EXPECT_EQ(layout_attr<int64_t>(l, CUBLASLT_MATRIX_LAYOUT_LD), ld);
  EXPECT_EQ(layout_attr<int32_t>(l, CUBLASLT_MATRIX_LAYOUT_ORDER), int32_t(CUBLASLT_ORDER_COL));
}

// y[M, N] = x[M, K]·W[N, K]ᵀ as column-major yᵀ = op_T(W: K×N)·(x: K×M), both e4m3 with VEC32_UE8M0 scales.
TEST(BlackwellLayout, BlockScaledDescriptor) {
  const int64_t m = 3, n = 5120, k = 2048;
  const LtGemmDesc d({m, n, k, LtGemmType::mxfp8, true});
  EXPECT_EQ(desc_attr<int32_t>(d.op, CUBLASLT_MATMUL_DESC_TRANSA), int32_t(CUBLAS_OP_T));
  EXPECT_EQ(desc_attr<int32_t>(d.op, CUBLASLT_MATMUL_DESC_TRANSB), int32_t(CUBLAS_OP_N));
  EXPECT_EQ(desc_attr<int32_t>(d.op, CUBLASLT_MATMUL_DESC_COMPUTE_TYPE), int32_t(CUBLAS_COMPUTE_32F));
  EXPECT_EQ(desc_attr<int32_t>(d.op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE),
            int32_t(CUBLASLT_MATMUL_MATRIX_SCALE_VEC32_UE8M0));
  EXPECT_EQ(desc_attr<int32_t>(d.op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE),
            int32_t(CUBLASLT_MATMUL_MATRIX_SCALE_VEC32_UE8M0));
  EXPECT_EQ(desc_attr<uint32_t>(d.op, CUBLASLT_MATMUL_DESC_EPILOGUE), uint32_t(CUBLASLT_EPILOGUE_BIAS));
  expect_layout(d.a, CUDA_R_8F_E4M3, k, n, k);  // W
  expect_layout(d.b, CUDA_R_8F_E4M3, k, m, k);  // x
  expect_layout(d.d, CUDA_R_16BF, n, m, n);     // yᵀ
}

TEST(BlackwellLayout, Bf16DescriptorsHaveNoBlockScales) {
  const LtGemmDesc d({16, 128, 64, LtGemmType::bf16_f32, false});
  EXPECT_EQ(desc_attr<int32_t>(d.op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE),
            int32_t(CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F));
  EXPECT_EQ(desc_attr<uint32_t>(d.op, CUBLASLT_MATMUL_DESC_EPILOGUE), uint32_t(CUBLASLT_EPILOGUE_DEFAULT));
  expect_layout(d.a, CUDA_R_16BF, 64, 128, 64);
  expect_layout(d.d, CUDA_R_32F, 128, 16, 128);
}

// Hopper's fastest fp8 GEMM, the benchmarks' ceiling: e4m3 operands, scalar f32 scales, fast accumulation.
TEST(BlackwellLayout, Fp8PerTensorDescriptor) {
  const int64_t m = 2048, n = 6144, k = 4096;
  const LtGemmDesc d({m, n, k, LtGemmType::fp8, false});
  EXPECT_EQ(desc_attr<int32_t>(d.op, CUBLASLT_MATMUL_DESC_TRANSA), int32_t(CUBLAS_OP_T));
  EXPECT_EQ(desc_attr<int32_t>(d.op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE),
            int32_t(CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F));
  EXPECT_EQ(desc_attr<int32_t>(d.op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE),
            int32_t(CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F));
  EXPECT_EQ(desc_attr<int8_t>(d.op, CUBLASLT_MATMUL_DESC_FAST_ACCUM), 1);
  expect_layout(d.a, CUDA_R_8F_E4M3, k, n, k);
  expect_layout(d.b, CUDA_R_8F_E4M3, k, m, k);
  expect_layout(d.d, CUDA_R_16BF, n, m, n);
}

// The scale operands cuBLASLt reads: rows padded to 128, scale columns (K/32) to 4.
TEST(BlackwellLayout, TiledScaleSizes) {
  EXPECT_EQ(swizzled_scales_shape({3, 2048 / 32}), (Shape{128 * 64}));          // decode activations
  EXPECT_EQ(swizzled_scales_shape({5120, 2048 / 32}), (Shape{5120 * 64}));      // qkv weight
  EXPECT_EQ(swizzled_scales_shape({151936, 2048 / 32}), (Shape{151936 * 64}));  // lm_head (151936 = 1187·128)
  EXPECT_EQ(swizzled_scales_shape({130, 96 / 32}), (Shape{256 * 4}));           // both paddings
}

TEST(BlackwellLayout, PointerAlignment) {
  alignas(256) static unsigned char buffer[512];
  EXPECT_EQ(pointer_alignment(buffer), 256);
  EXPECT_EQ(pointer_alignment(buffer + 16), 16);
  EXPECT_EQ(pointer_alignment(buffer + 2), 2);
  EXPECT_EQ(pointer_alignment(buffer + 384), 128);
}

}  // namespace
}  // namespace mxmoe
