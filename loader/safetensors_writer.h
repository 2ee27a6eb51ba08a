#pragma once
// Writes safetensors files: checkpoints made by tests and benchmarks, and raw (possibly
// malformed) files for the bad-input tests.
#include <map>
#include <string>
#include <vector>

#include "engine/dtype.h"
#include "engine/tensor.h"

namespace mxmoe {

struct SafetensorsEntry {
  std::string name;
  DType dtype;
  Shape shape;
  const void* data;  // numel(shape) · dtype_size(dtype) bytes
};

// Tensors are laid out in the given order, the header padded with spaces to a multiple of 8.
void write_safetensors(const std::string& path, const std::vector<SafetensorsEntry>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// A file of an 8-byte length `header_length` (the real length when negative), `header`, `data`.
void write_raw_safetensors(const std::string& path, const std::string& header, const std::string& data,
                           int64_t header_length = -1);

// A new empty directory under the system temp dir, e.g. /tmp/<prefix>-XXXXXX.
std::string make_temp_dir(const std::string& prefix);

// model.safetensors.index.json for shards: tensor name -> file name.
void write_safetensors_index(const std::string& path, const std::map<std::string, std::string>& weight_map);

}  // namespace mxmoe
