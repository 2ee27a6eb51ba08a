#pragma once
// Safetensors: an 8-byte little-endian header length N, N bytes of JSON
//   {"<tensor name>": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"<key>": "<string>"}}
// then the data area; offsets are relative to its start. The header is validated strictly
// (see parse_safetensors_header); the file is memory-mapped, so tensors are read straight from
// the page cache without a copy.
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/dtype.h"
#include "engine/tensor.h"

namespace mxmoe {

struct TensorInfo {
  std::string name;
  std::string dtype_name;      // as written in the file, e.g. "BF16"
  std::optional<DType> dtype;  // engine dtype; empty for valid safetensors dtypes the engine cannot use (F64, I64, ...)
  size_t element_size = 0;
  Shape shape;
  uint64_t begin = 0, end = 0;  // byte range in the data area
  uint64_t nbytes() const { return end - begin; }
};

struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // sorted by name
  std::map<std::string, std::string> metadata;
  uint64_t data_offset = 0;  // file offset of the data area: 8 + N
};

// Validates a whole file's bytes: header length within the file (and at most 100 MB), valid
// JSON object, known dtype names, non-negative shapes whose element count times the dtype size
// equals the byte range, ranges inside the data area, no two ranges overlapping, no unknown
// keys, duplicate names rejected, __metadata__ a map of strings. Errors name `file` and the tensor.
SafetensorsHeader parse_safetensors_header(std::span<const uint8_t> file_bytes, const std::string& file);

// The safetensors name of an engine dtype ("BF16", ...).
std::string_view safetensors_dtype_name(DType dtype);

// A memory-mapped, validated safetensors file.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const SafetensorsHeader& header() const { return header_; }
  const uint8_t* data(const TensorInfo& t) const { return base_ + header_.data_offset + t.begin; }

 private:
  std::string path_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  SafetensorsHeader header_;
};

}  // namespace mxmoe
