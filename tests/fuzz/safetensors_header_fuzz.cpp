// libFuzzer target: parse_safetensors_header on arbitrary bytes (the whole "file"). Any input
// must either parse or throw mxmoe::Error; crashes, hangs, sanitizer reports and other
// exceptions are bugs. A parsed header is re-checked: every range lies in the data area.
#include <cstdint>
#include <cstdlib>

#include "engine/error.h"
#include "loader/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const mxmoe::SafetensorsHeader h = mxmoe::parse_safetensors_header({data, size}, "fuzz");
    for (const mxmoe::TensorInfo& t : h.tensors)
      if (t.begin > t.end || h.data_offset + t.end > size) std::abort();
  } catch (const mxmoe::Error&) {
  }
  return 0;
}
