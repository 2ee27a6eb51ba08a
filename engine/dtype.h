#pragma once
// Element types the engine stores. fp8 e4m3 (e4m3fn: max 448, no Inf) and e8m0 (power-of-two
// scale 2^(s-127), 0xFF = NaN) are the MXFP8 pair; both are one byte.
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace mxmoe {

enum class DType : uint8_t { f32, bf16, f16, e4m3, e8m0, i32, i64, u8 };

constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: case DType::i32: return 4;
    case DType::bf16: case DType::f16: return 2;
    case DType::i64: return 8;
    case DType::e4m3: case DType::e8m0: case DType::u8: return 1;
  }
  return 0;
}

std::string_view dtype_name(DType t);

}  // namespace mxmoe
