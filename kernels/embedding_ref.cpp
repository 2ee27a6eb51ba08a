#include <cstring>

#include "engine/error.h"
#include "kernels/embedding.h"

namespace mxmoe {

namespace detail {

void check_embedding_args(const char* op, const Tensor& ids, const Tensor& table, const Tensor& out, Device device) {
  MXMOE_CHECK(ids.device() == device && table.device() == device && out.device() == device, op,
              ": tensors must be on the ", device == Device::cpu ? "CPU" : "GPU");
  MXMOE_CHECK(ids.dtype() == DType::i32 && ids.dim() == 1 && ids.is_contiguous(), op, ": ids must be i32 [T], got ",
              dtype_name(ids.dtype()), " ", shape_str(ids.shape()));
  MXMOE_CHECK(table.dtype() == DType::bf16 && table.dim() == 2 && table.is_contiguous(), op,
              ": table must be contiguous bf16 [V, H], got ", dtype_name(table.dtype()), " ", shape_str(table.shape()));
  MXMOE_CHECK(out.dtype() == DType::bf16 && out.is_contiguous() && out.shape() == Shape({ids.size(0), table.size(1)}),
              op, ": out must be contiguous bf16 [", ids.size(0), ", ", table.size(1), "], got ",
              shape_str(out.shape()));
  MXMOE_CHECK(table.size(1) % 8 == 0, op, ": hidden size ", table.size(1), " must be a multiple of 8");
}

}  // namespace detail

void embedding_ref(const Tensor& ids, const Tensor& table, int64_t vocab_begin, const Tensor& out) {
  detail::check_embedding_args("embedding_ref", ids, table, out, Device::cpu);
  const int64_t rows = table.size(0), width_bytes = table.size(1) * 2;
  for (int64_t t = 0; t < ids.size(0); ++t) {
    const int64_t row = int64_t(ids.data_as<const int32_t>()[t]) - vocab_begin;
    char* dst = out.data_as<char>() + t * width_bytes;
    if (row >= 0 && row < rows)
      std::memcpy(dst, table.data_as<const char>() + row * width_bytes, size_t(width_bytes));
    else
      std::memset(dst, 0, size_t(width_bytes));
  }
}

}  // namespace mxmoe
