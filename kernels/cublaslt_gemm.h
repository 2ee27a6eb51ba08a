#pragma once
// cuBLASLt GEMMs in the engine's row-major convention y[M, N] = x[M, K] · W[N, K]ᵀ (+ bias[N]).
//
// cuBLASLt is column-major: the same product is yᵀ[N×M] = op(A)·B with A = W seen as K×N
// (lda = K) transposed, B = x seen as K×M (ldb = K), D = yᵀ N×M (ldd = N): the "TN" form, the only
// one FP8 accepts.
//  - bf16: A, B bf16, fp32 accumulation; D bf16 (bias through the bf16 epilogue) or f32 (router
//    logits, no bias).
//  - MXFP8 block-scaled (Blackwell, sm_100+): A, B e4m3 with one UE8M0 scale per 32 elements of K
//    on both (CUBLASLT_MATMUL_MATRIX_SCALE_VEC32_UE8M0), scales in the 128x4 tiled layout of
//    mxfp8_swizzle_scales; D bf16. cuBLASLt refuses it on sm_90 (CUBLAS_STATUS_NOT_SUPPORTED).
//  - FP8 per-tensor (sm_89+): A, B e4m3 with one f32 scale each, fast accumulation; D bf16. Not an
//    engine path (one scale per tensor loses MXFP8's accuracy): the benchmarks' speed ceiling for
//    an fp8-weight GEMM on Hopper.
// Plans (descriptors + the heuristic's algorithm) are cached per device and shape, with a 32 MiB
// workspace per device; calls on one device are serialized by a lock held while enqueuing.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <string>

#include "engine/tensor.h"
#include "kernels/mxfp8.h"

namespace mxmoe {

enum class LtGemmType : uint8_t {
  bf16,      // bf16 x bf16 -> bf16
  bf16_f32,  // bf16 x bf16 -> f32
  mxfp8,     // e4m3 x e4m3, VEC32_UE8M0 scales on both -> bf16
  fp8,       // e4m3 x e4m3, one f32 scale on each -> bf16
};

struct LtGemmShape {
  int64_t m = 0, n = 0, k = 0;
  LtGemmType type = LtGemmType::bf16;
  bool bias = false;
  int alignment = 256;  // bytes every operand pointer is aligned to (a heuristic preference)
};

// The cuBLASLt descriptors of one GEMM (RAII). Building them needs no GPU, so CPU tests inspect them.
class LtGemmDesc {
 public:
  explicit LtGemmDesc(const LtGemmShape& shape);
  ~LtGemmDesc();
  LtGemmDesc(const LtGemmDesc&) = delete;
  LtGemmDesc& operator=(const LtGemmDesc&) = delete;

  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr;  // W: K×N column-major, transposed by op
  cublasLtMatrixLayout_t b = nullptr;  // x: K×M column-major
  cublasLtMatrixLayout_t d = nullptr;  // yᵀ: N×M column-major (also C; beta = 0)
};

// Largest power of two (<= 256) dividing the address: the alignment of an operand.
int pointer_alignment(const void* p);

// Empty when cuBLASLt offers an algorithm for this GEMM on the current GPU, else the reason
// (e.g. "cublasLtMatmulAlgoGetHeuristic: CUBLAS_STATUS_NOT_SUPPORTED"). Cached like the plans.
std::string cublaslt_probe(const LtGemmShape& shape);

// x [M, K] bf16, w [N, K] bf16, bias [N] bf16 or null, y [M, N] bf16 (or f32 without bias).
void cublaslt_gemm_bf16(const Tensor& x, const Tensor& w, const Tensor* bias, const Tensor& y, cudaStream_t stream);

// x: [M, K] e4m3 + tiled scales [round_up(M,128)·round_up(K/32,4)]; w: [N, K] e4m3 + tiled scales
// [round_up(N,128)·round_up(K/32,4)]; bias [N] bf16 or null; y [M, N] bf16.
void cublaslt_gemm_mxfp8(const MxTensor& x, const MxTensor& w, const Tensor* bias, const Tensor& y,
                         cudaStream_t stream);

// y = (x_scale · w_scale) · x · Wᵀ: x [M, K] e4m3, w [N, K] e4m3, x_scale / w_scale one f32 each (CUDA,
// read when the GEMM runs), y [M, N] bf16. K must be a multiple of 16 (cuBLASLt's FP8 rule).
void cublaslt_gemm_fp8(const Tensor& x, const Tensor& x_scale, const Tensor& w, const Tensor& w_scale, const Tensor& y,
                       cudaStream_t stream);

// The Blackwell MXFP8 linear: quantizes x [M, K] bf16 to MXFP8 (rule), tiles its scales, then
// cublaslt_gemm_mxfp8 with w (tiled scales). Activation scratch is a StreamScratch.
void cublaslt_linear_mxfp8(const Tensor& x, const MxTensor& w, const Tensor* bias, const Tensor& y, ScaleRule rule,
                           cudaStream_t stream);

// Stream-ordered device scratch (cudaMallocAsync from the device's default pool), freed in stream
// order when it goes out of scope: graph-capturable and safe across streams, but outside the
// Allocation accounting, so only for per-call temporaries.
class StreamScratch {
 public:
  StreamScratch(const Shape& shape, DType dtype, cudaStream_t stream);
  ~StreamScratch();
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;
  const Tensor& tensor() const { return tensor_; }

 private:
  Tensor tensor_;
  cudaStream_t stream_;
};

}  // namespace mxmoe
