#pragma once
// A Hugging Face checkpoint: one safetensors file, or shards listed by
// model.safetensors.index.json ({"metadata": {...}, "weight_map": {tensor: shard file}}).
// Tensor names map to their (memory-mapped) file; a name in two files is an error.
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "loader/safetensors.h"

namespace mxmoe {

struct CheckpointTensor {
  const SafetensorsFile* file;
  const TensorInfo* info;
  const uint8_t* data() const { return file->data(*info); }
};

class Checkpoint {
 public:
  // path: a directory holding model.safetensors.index.json or model.safetensors, or a .safetensors file.
  explicit Checkpoint(const std::string& path);

  const std::string& path() const { return path_; }
  const CheckpointTensor* find(const std::string& name) const;  // null when absent
  std::vector<std::string> names() const;                       // sorted
  size_t file_count() const { return files_.size(); }

 private:
  void add_file(const std::string& file);

  std::string path_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::unordered_map<std::string, CheckpointTensor> tensors_;
};

}  // namespace mxmoe
