#include "kernels/dequant_gemm.h"

#include <algorithm>

#include "kernels/cublaslt_gemm.h"

namespace mxmoe {

void dequant_gemm(const Tensor& x, const MxTensor& w, const Tensor* bias, const Tensor& y, cudaStream_t stream) {
  const StreamScratch w_bf16(w.elems.shape(), DType::bf16, stream);  // [N, K]
  mxfp8_dequantize(w, w_bf16.tensor(), stream);
  cublaslt_gemm_bf16(x, w_bf16.tensor(), bias, y, stream);
}

bool dequant_gemm_is_faster(int64_t m, int64_t n, int64_t k, int sms) {
  constexpr double kScratchCap = 128.0 * (1 << 20), kCopyBytesPerUs = 3e6, kBf16FlopsPerUs = 750e6;
  const double weights = double(n) * double(k);
  if (2 * weights > kScratchCap || sms <= 0) return false;
  const int64_t tokens = m <= 128 ? 128 : 256;
  const int64_t tiles = (m + tokens - 1) / tokens * ((n + 127) / 128), waves = (tiles + sms - 1) / sms;
  const double w8a16_us = double(waves) * double(k) / 64 * (tokens == 128 ? 0.8 : 1.1);
  const double dequant_us = 4 * weights / kCopyBytesPerUs +
                            std::max(2 * double(m) * weights / kBf16FlopsPerUs, 2 * weights / kCopyBytesPerUs) + 3;
  return dequant_us < w8a16_us;
}

}  // namespace mxmoe
