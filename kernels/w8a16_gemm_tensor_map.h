#pragma once
// Host side of the TMA loads in kernels/w8a16_gemm_rs.cuh: a 2-D tensor map (CUtensorMap) over a
// row-major matrix in device memory, encoded through the driver entry point that the CUDA runtime
// hands out (no link against libcuda).
#include <cuda.h>

#include <cstdint>

namespace mxmoe::w8a16 {

struct TensorMap2d {
  const void* base;             // 16-byte aligned
  CUtensorMapDataType dtype;
  uint64_t cols, rows;          // element columns (innermost), rows
  uint64_t row_bytes;           // multiple of 16
  uint32_t box_cols, box_rows;  // box_cols · element size <= the swizzle span
  CUtensorMapSwizzle swizzle;
};

// Out-of-bounds parts of a box read as zeros. Throws mxmoe::Error on misaligned input or a driver error.
CUtensorMap make_tensor_map(const TensorMap2d& m);

}  // namespace mxmoe::w8a16
