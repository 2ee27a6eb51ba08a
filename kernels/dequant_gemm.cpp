#include "kernels/dequant_gemm.h"

#include "kernels/cublaslt_gemm.h"

namespace mxmoe {

void dequant_gemm(const Tensor& x, const MxTensor& w, const Tensor* bias, const Tensor& y, cudaStream_t stream) {
  const StreamScratch w_bf16(w.elems.shape(), DType::bf16, stream);  // [N, K]
  mxfp8_dequantize(w, w_bf16.tensor(), stream);
  cublaslt_gemm_bf16(x, w_bf16.tensor(), bias, y, stream);
}

}  // namespace mxmoe
