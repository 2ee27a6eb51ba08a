#pragma once
// A tensor seen as token rows [tokens, width]: dimension 0 may be strided (a view of q, k or v
// inside a fused QKV output, or a pitched buffer) while everything after it is contiguous.
// The per-token kernels (norm, rope, activation, KV-cache write, attention) all accept this form.
#include "engine/error.h"
#include "engine/tensor.h"

namespace mxmoe {

struct TokenRows {
  int64_t tokens = 0;
  int64_t width = 0;   // elements of one token row
  int64_t stride = 0;  // elements between consecutive token rows
};

inline TokenRows token_rows(const Tensor& t, const char* what) {
  MXMOE_CHECK(t.dim() >= 1, what, ": expected a tensor with a token dimension");
  const auto& shape = t.shape();
  const auto& strides = t.strides();
  int64_t expected = 1;
  for (int d = t.dim() - 1; d >= 1; --d) {
    MXMOE_CHECK(strides[size_t(d)] == expected || shape[size_t(d)] == 1, what, ": dimensions after the first must be contiguous, shape ",
                shape_str(shape));
    expected *= shape[size_t(d)];
  }
  if (t.dim() == 1) {
    MXMOE_CHECK(strides[0] == 1 || shape[0] <= 1, what, ": a 1-D tensor must be contiguous");
    return {1, shape[0], shape[0]};
  }
  return {shape[0], expected, shape[0] > 1 ? strides[0] : expected};
}

}  // namespace mxmoe
