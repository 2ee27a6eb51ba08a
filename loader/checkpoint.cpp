#include "loader/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "engine/error.h"

namespace mxmoe {

namespace fs = std::filesystem;

namespace {

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

// weight_map of an index file: tensor name -> shard file name (relative to the index's directory).
std::vector<std::pair<std::string, std::string>> read_index(const fs::path& index) {
  std::ifstream in(index);
  MXMOE_CHECK(in, index.string(), ": cannot open");
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail(index.string(), ": not valid JSON: ", e.what());
  }
  MXMOE_CHECK(root.is_object() && root.contains("weight_map") && root["weight_map"].is_object(), index.string(),
              ": needs a \"weight_map\" object");
  std::vector<std::pair<std::string, std::string>> map;
  for (const auto& [name, file] : root["weight_map"].items()) {
    MXMOE_CHECK(file.is_string(), index.string(), ": weight_map[\"", name, "\"] must be a file name, got ",
                file.dump());
    const std::string f = file.get<std::string>();
    // Shards sit beside the index; a path component could point anywhere.
    MXMOE_CHECK(!f.empty() && f.find('/') == std::string::npos && f != "." && f != "..", index.string(),
                ": weight_map[\"", name, "\"] = \"", f, "\" is not a plain file name");
    map.emplace_back(name, f);
  }
  return map;
}

}  // namespace

Checkpoint::Checkpoint(const std::string& path) : path_(path) {
  const fs::path p(path);
  MXMOE_CHECK(fs::exists(p), path, ": no such file or directory");
  if (!fs::is_directory(p)) {
    add_file(path);
    return;
  }
  if (fs::exists(p / kIndexName)) {
    const auto map = read_index(p / kIndexName);
    std::set<std::string> shards;
    for (const auto& [name, file] : map) shards.insert(file);
    for (const std::string& file : shards) add_file((p / file).string());
    for (const auto& [name, file] : map) {
      const CheckpointTensor* t = find(name);
      MXMOE_CHECK(t && fs::path(t->file->path()).filename() == file, (p / kIndexName).string(), ": lists tensor \"",
                  name, "\" in ", file, ", which does not hold it");
    }
    return;
  }
  MXMOE_CHECK(fs::exists(p / kSingleName), path, ": holds neither ", kIndexName, " nor ", kSingleName);
  add_file((p / kSingleName).string());
}

void Checkpoint::add_file(const std::string& file) {
  files_.push_back(std::make_unique<SafetensorsFile>(file));
  const SafetensorsFile& f = *files_.back();
  for (const TensorInfo& t : f.header().tensors) {
    const auto [it, inserted] = tensors_.emplace(t.name, CheckpointTensor{&f, &t});
    MXMOE_CHECK(inserted, "tensor \"", t.name, "\" is in both ", it->second.file->path(), " and ", file);
  }
}

const CheckpointTensor* Checkpoint::find(const std::string& name) const {
  const auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& [name, t] : tensors_) out.push_back(name);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace mxmoe
