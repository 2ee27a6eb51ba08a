#include "kernels/w8a16_gemm_tensor_map.h"

#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <mutex>

#include "engine/cuda_check.h"
#include "engine/error.h"

namespace mxmoe::w8a16 {
namespace {

PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = nullptr;
  static std::once_flag once;
  std::call_once(once, [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult found{};
    CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &found));
    MXMOE_CHECK(found == cudaDriverEntryPointSuccess && p, "cuTensorMapEncodeTiled is not available from the driver");
    fn = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  });
  return fn;
}

}  // namespace

CUtensorMap make_tensor_map(const TensorMap2d& m) {
  MXMOE_CHECK(reinterpret_cast<uintptr_t>(m.base) % 16 == 0 && m.row_bytes % 16 == 0,
              "TMA tensor map: base address and row stride must be 16-byte aligned, got ", m.base, " and ",
              m.row_bytes, " bytes");
  CUtensorMap map{};
  const cuuint64_t dims[2] = {m.cols, m.rows};
  const cuuint64_t strides[1] = {m.row_bytes};
  const cuuint32_t box[2] = {m.box_cols, m.box_rows};
  const cuuint32_t elem_strides[2] = {1, 1};
  const CUresult r = encode_fn()(&map, m.dtype, 2, const_cast<void*>(m.base), dims, strides, box, elem_strides,
                                 CU_TENSOR_MAP_INTERLEAVE_NONE, m.swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                 CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  MXMOE_CHECK(r == CUDA_SUCCESS, "cuTensorMapEncodeTiled failed (CUresult ", int(r), ") for ", m.rows, " x ", m.cols,
              " elements, box ", m.box_rows, " x ", m.box_cols);
  return map;
}

}  // namespace mxmoe::w8a16
