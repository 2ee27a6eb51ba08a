#include "loader/safetensors_writer.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "engine/error.h"
#include "loader/safetensors.h"

namespace mxmoe {

namespace {

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

void write_all(std::FILE* f, const void* data, size_t bytes, const std::string& path) {
  MXMOE_CHECK(bytes == 0 || std::fwrite(data, 1, bytes, f) == bytes, path, ": write failed");
}

void write_file(const std::string& path, const std::string& header, int64_t header_length,
                const std::vector<std::pair<const void*, size_t>>& blobs) {
  std::unique_ptr<std::FILE, FileCloser> f(std::fopen(path.c_str(), "wb"));
  MXMOE_CHECK(f, path, ": cannot create");
  const uint64_t n = header_length < 0 ? header.size() : uint64_t(header_length);
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = uint8_t(n >> (8 * i));
  write_all(f.get(), len, 8, path);
  write_all(f.get(), header.data(), header.size(), path);
  for (const auto& [data, bytes] : blobs) write_all(f.get(), data, bytes, path);
  MXMOE_CHECK(std::fflush(f.get()) == 0, path, ": write failed");
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<SafetensorsEntry>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<std::pair<const void*, size_t>> blobs;
  uint64_t offset = 0;
  for (const SafetensorsEntry& t : tensors) {
    int64_t numel = 1;
    for (int64_t d : t.shape) numel *= d;
    const size_t bytes = size_t(numel) * dtype_size(t.dtype);
    header[t.name] = {{"dtype", safetensors_dtype_name(t.dtype)}, {"shape", t.shape},
                      {"data_offsets", {offset, offset + bytes}}};
    blobs.emplace_back(t.data, bytes);
    offset += bytes;
  }
  std::string text = header.dump();
  text.resize((text.size() + 7) / 8 * 8, ' ');
  write_file(path, text, -1, blobs);
}

void write_raw_safetensors(const std::string& path, const std::string& header, const std::string& data,
                           int64_t header_length) {
  write_file(path, header, header_length, {{data.data(), data.size()}});
}

std::string make_temp_dir(const std::string& prefix) {
  std::string path = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
  MXMOE_CHECK(::mkdtemp(path.data()), "cannot create a temporary directory ", path);
  return path;
}

void write_safetensors_index(const std::string& path, const std::map<std::string, std::string>& weight_map) {
  std::ofstream out(path);
  MXMOE_CHECK(out, path, ": cannot create");
  out << nlohmann::json{{"metadata", nlohmann::json::object()}, {"weight_map", weight_map}}.dump(2);
  MXMOE_CHECK(out.good(), path, ": write failed");
}

}  // namespace mxmoe
