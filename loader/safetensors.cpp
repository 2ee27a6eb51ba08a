#include "loader/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "engine/error.h"

namespace mxmoe {

namespace {

using nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference implementation's limit
// Deepest legitimate JSON nesting: top object (0) > tensor entry (1) > shape array (2) > its numbers (3).
constexpr int kMaxDepth = 3;

struct DTypeEntry {
  std::string_view name;
  size_t size;
  std::optional<DType> dtype;
};

// Every dtype of the safetensors format with a whole-byte size; the engine uses five of them.
constexpr DTypeEntry kDTypes[] = {
    {"BF16", 2, DType::bf16}, {"F16", 2, DType::f16},      {"F32", 4, DType::f32},   {"F8_E4M3", 1, DType::e4m3},
    {"U8", 1, DType::u8},     {"F8_E8M0", 1, std::nullopt}, {"F8_E5M2", 1, std::nullopt}, {"F64", 8, std::nullopt},
    {"BOOL", 1, std::nullopt}, {"I8", 1, std::nullopt},     {"I16", 2, std::nullopt}, {"U16", 2, std::nullopt},
    {"I32", 4, std::nullopt}, {"U32", 4, std::nullopt},    {"I64", 8, std::nullopt}, {"U64", 8, std::nullopt},
};

const DTypeEntry* find_dtype(std::string_view name) {
  for (const DTypeEntry& e : kDTypes)
    if (e.name == name) return &e;
  return nullptr;
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = v << 8 | p[i];
  return v;
}

uint64_t unsigned_field(const json& v, const std::string& where, const char* what) {
  MXMOE_CHECK(v.is_number_unsigned(), where, ": ", what, " must be a non-negative integer, got ", v.dump());
  return v.get<uint64_t>();
}

TensorInfo parse_entry(const std::string& name, const json& entry, const std::string& where) {
  MXMOE_CHECK(entry.is_object(), where, ": entry must be an object, got ", entry.dump());
  for (const auto& [key, value] : entry.items())
    MXMOE_CHECK(key == "dtype" || key == "shape" || key == "data_offsets", where, ": unknown key \"", key, "\"");
  MXMOE_CHECK(entry.contains("dtype") && entry.contains("shape") && entry.contains("data_offsets"), where,
              ": needs dtype, shape and data_offsets");
  TensorInfo t;
  t.name = name;
  const json& dtype = entry["dtype"];
  MXMOE_CHECK(dtype.is_string(), where, ": dtype must be a string, got ", dtype.dump());
  t.dtype_name = dtype.get<std::string>();
  const DTypeEntry* known = find_dtype(t.dtype_name);
  MXMOE_CHECK(known, where, ": unknown dtype \"", t.dtype_name, "\"");
  t.dtype = known->dtype;
  t.element_size = known->size;

  const json& shape = entry["shape"];
  MXMOE_CHECK(shape.is_array(), where, ": shape must be an array, got ", shape.dump());
  uint64_t bytes = t.element_size;
  for (const json& d : shape) {
    const uint64_t n = unsigned_field(d, where, "shape entry");
    MXMOE_CHECK(n <= uint64_t(INT64_MAX) && !__builtin_mul_overflow(bytes, n, &bytes), where, ": shape ",
                shape.dump(), " overflows");
    t.shape.push_back(int64_t(n));
  }

  const json& offsets = entry["data_offsets"];
  MXMOE_CHECK(offsets.is_array() && offsets.size() == 2, where, ": data_offsets must be [begin, end], got ",
              offsets.dump());
  t.begin = unsigned_field(offsets[0], where, "data_offsets");
  t.end = unsigned_field(offsets[1], where, "data_offsets");
  MXMOE_CHECK(t.begin <= t.end, where, ": data_offsets [", t.begin, ", ", t.end, "] end before begin");
  MXMOE_CHECK(t.end - t.begin == bytes, where, ": shape ", shape_str(t.shape), " of ", t.dtype_name, " is ", bytes,
              " bytes but data_offsets [", t.begin, ", ", t.end, "] span ", t.end - t.begin);
  return t;
}

}  // namespace

std::string_view safetensors_dtype_name(DType dtype) {
  for (const DTypeEntry& e : kDTypes)
    if (e.dtype == dtype) return e.name;
  fail("dtype ", dtype_name(dtype), " has no safetensors name");
}

SafetensorsHeader parse_safetensors_header(std::span<const uint8_t> bytes, const std::string& file) {
  MXMOE_CHECK(bytes.size() >= 8, file, ": not a safetensors file: ", bytes.size(),
              " bytes, too short for the 8-byte header length");
  const uint64_t n = read_u64_le(bytes.data());
  MXMOE_CHECK(n <= kMaxHeaderBytes, file, ": header length ", n, " exceeds the ", kMaxHeaderBytes, "-byte limit");
  MXMOE_CHECK(n <= bytes.size() - 8, file, ": header length ", n, " runs past the end of the file (", bytes.size(),
              " bytes): truncated or not a safetensors file");
  SafetensorsHeader h;
  h.data_offset = 8 + n;
  const uint64_t data_size = bytes.size() - h.data_offset;

  // Reject deep nesting and duplicate tensor names while parsing (the DOM would keep only the last).
  std::set<std::string> seen;
  const auto check = [&](int depth, json::parse_event_t event, json& parsed) {
    MXMOE_CHECK(depth <= kMaxDepth, file, ": header JSON nested deeper than a safetensors header can be");
    if (depth == 1 && event == json::parse_event_t::key)
      MXMOE_CHECK(seen.insert(parsed.get<std::string>()).second, file, ": tensor \"", parsed.get<std::string>(),
                  "\" appears twice in the header");
    return true;
  };
  json root;
  try {
    const char* text = reinterpret_cast<const char*>(bytes.data() + 8);
    root = json::parse(text, text + n, check);
  } catch (const json::exception& e) {
    fail(file, ": header is not valid JSON: ", e.what());
  }
  MXMOE_CHECK(root.is_object(), file, ": header must be a JSON object, got ", root.type_name());

  for (const auto& [name, entry] : root.items()) {
    if (name == "__metadata__") {
      MXMOE_CHECK(entry.is_object(), file, ": __metadata__ must be an object of strings");
      for (const auto& [key, value] : entry.items()) {
        MXMOE_CHECK(value.is_string(), file, ": __metadata__ value of \"", key, "\" must be a string, got ",
                    value.dump());
        h.metadata[key] = value.get<std::string>();
      }
      continue;
    }
    const std::string where = cat(file, ": tensor \"", name, "\"");
    TensorInfo t = parse_entry(name, entry, where);
    MXMOE_CHECK(t.end <= data_size, where, ": data_offsets [", t.begin, ", ", t.end, "] out of range of the ",
                data_size, "-byte data area (file truncated?)");
    h.tensors.push_back(std::move(t));
  }

  // No two non-empty ranges may overlap.
  std::vector<const TensorInfo*> by_offset;
  for (const TensorInfo& t : h.tensors)
    if (t.nbytes() > 0) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i)
    MXMOE_CHECK(by_offset[i]->begin >= by_offset[i - 1]->end, file, ": tensors \"", by_offset[i - 1]->name,
                "\" [", by_offset[i - 1]->begin, ", ", by_offset[i - 1]->end, ") and \"", by_offset[i]->name, "\" [",
                by_offset[i]->begin, ", ", by_offset[i]->end, ") overlap");
  return h;
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  MXMOE_CHECK(fd >= 0, path, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, ": not a regular file");
  }
  size_ = size_t(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
    const int err = errno;
    ::close(fd);
    MXMOE_CHECK(p != MAP_FAILED, path, ": mmap failed: ", std::strerror(err));
    base_ = static_cast<const uint8_t*>(p);
  } else {
    ::close(fd);
  }
  try {
    header_ = parse_safetensors_header({base_, size_}, path);
  } catch (...) {
    if (base_) ::munmap(const_cast<uint8_t*>(base_), size_);
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (base_) ::munmap(const_cast<uint8_t*>(base_), size_);
}

}  // namespace mxmoe
