// Safetensors header validation and sharded checkpoints: every malformed file is written by the
// test and must give an Error naming the file and the problem (never a crash).
#include <gtest/gtest.h>

#include <filesystem>
#include <cstring>
#include <fstream>

#include "engine/error.h"
#include "loader/checkpoint.h"
#include "loader/safetensors.h"
#include "loader/safetensors_writer.h"

namespace mxmoe {
namespace {

namespace fs = std::filesystem;

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = make_temp_dir("mxmoe-safetensors-test"); }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  // Writes a raw file and expects opening it to fail with all of `parts` in the message.
  void expect_bad(const std::string& header, const std::string& data, std::vector<std::string> parts,
                  int64_t header_length = -1) {
    const std::string file = path("bad.safetensors");
    write_raw_safetensors(file, header, data, header_length);
    parts.push_back(file);
    try {
      SafetensorsFile f(file);
      ADD_FAILURE() << "no error for header " << header;
    } catch (const Error& e) {
      for (const std::string& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << "\n  lacks: " << p;
    }
  }

  std::string dir_;
};

TEST_F(SafetensorsTest, RoundTripAllDtypesAndMetadata) {
  std::vector<uint16_t> bf16 = {0x3f80, 0xc000, 0x0000, 0x7f7f, 0x0001, 0x8001};  // [2, 3]
  std::vector<float> f32 = {1.5f, -2.25f, 3.f, 1e-30f};                         // [4]
  std::vector<uint8_t> bytes = {1, 2, 3, 4, 5};                                 // [5]
  std::vector<uint16_t> empty;
  write_safetensors(path("a.safetensors"),
                    {{"w.bf16", DType::bf16, {2, 3}, bf16.data()},
                     {"w.f32", DType::f32, {4}, f32.data()},
                     {"w.e4m3", DType::e4m3, {5}, bytes.data()},
                     {"w.u8", DType::u8, {1, 5}, bytes.data()},
                     {"w.empty", DType::f16, {0, 7}, empty.data()}},
                    {{"format", "pt"}});
  SafetensorsFile f(path("a.safetensors"));
  auto tensors = f.header().tensors;  // sorted by name: bf16, e4m3, empty, f32, u8
  ASSERT_EQ(tensors.size(), 5u);
  std::swap(tensors[1], tensors[3]);  // -> bf16, f32, empty, e4m3, u8
  std::swap(tensors[2], tensors[3]);  // -> bf16, f32, e4m3, empty, u8
  std::swap(tensors[3], tensors[4]);  // -> bf16, f32, e4m3, u8, empty
  EXPECT_EQ(f.header().metadata.at("format"), "pt");
  EXPECT_EQ(tensors[0].name, "w.bf16");
  EXPECT_EQ(tensors[0].dtype, DType::bf16);
  EXPECT_EQ(tensors[0].shape, (Shape{2, 3}));
  EXPECT_EQ(std::memcmp(f.data(tensors[0]), bf16.data(), 12), 0);
  EXPECT_EQ(tensors[1].dtype, DType::f32);
  EXPECT_EQ(std::memcmp(f.data(tensors[1]), f32.data(), 16), 0);
  EXPECT_EQ(tensors[2].dtype, DType::e4m3);
  EXPECT_EQ(tensors[3].dtype, DType::u8);
  EXPECT_EQ(std::memcmp(f.data(tensors[3]), bytes.data(), 5), 0);
  EXPECT_EQ(tensors[4].shape, (Shape{0, 7}));
  EXPECT_EQ(tensors[4].nbytes(), 0u);
}

TEST_F(SafetensorsTest, KnownDtypesTheEngineCannotUseStillParse) {
  write_raw_safetensors(path("a.safetensors"), R"({"pos":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}})",
                        std::string(16, '\0'));
  SafetensorsFile f(path("a.safetensors"));
  EXPECT_FALSE(f.header().tensors[0].dtype.has_value());
  EXPECT_EQ(f.header().tensors[0].dtype_name, "I64");
}

TEST_F(SafetensorsTest, EmptyAndTooShortFiles) {
  expect_bad("", "", {"not valid JSON"}, 0);  // a zero-length header
  std::ofstream(path("empty.safetensors")).close();
  EXPECT_THROW(SafetensorsFile(path("empty.safetensors")), Error);
  try {
    SafetensorsFile f(path("empty.safetensors"));
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("too short"), std::string::npos) << e.what();
  }
}

TEST_F(SafetensorsTest, HeaderLengthPastEndOfFile) {
  expect_bad(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "abcd", {"runs past the end"}, 1000);
  expect_bad("{}", "", {"exceeds"}, int64_t(1) << 40);
}

TEST_F(SafetensorsTest, TruncatedDataArea) {
  expect_bad(R"({"w":{"dtype":"BF16","shape":[4,4],"data_offsets":[0,32]}})", std::string(20, 'x'),
             {"\"w\"", "out of range", "truncated"});
}

TEST_F(SafetensorsTest, InvalidJson) {
  expect_bad(R"({"w":{"dtype":"BF16","shape":[1],"data_offsets":[0,2]})", "xx", {"not valid JSON"});
  expect_bad("\xff\xfe{}", "", {"not valid JSON"});
  expect_bad("[1, 2]", "", {"must be a JSON object"});
  expect_bad(R"({"w": 5})", "", {"\"w\"", "must be an object"});
}

TEST_F(SafetensorsTest, UnknownDtype) {
  expect_bad(R"({"w":{"dtype":"BF17","shape":[1],"data_offsets":[0,2]}})", "xx", {"\"w\"", "unknown dtype \"BF17\""});
  expect_bad(R"({"w":{"dtype":7,"shape":[1],"data_offsets":[0,2]}})", "xx", {"\"w\"", "dtype must be a string"});
}

TEST_F(SafetensorsTest, ShapeAndByteSizeMismatch) {
  expect_bad(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,12]}})", std::string(24, 'x'),
             {"\"w\"", "[2, 3]", "24 bytes", "span 12"});
  expect_bad(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", std::string(8, 'x'),
             {"\"w\"", "non-negative integer"});
  expect_bad(R"({"w":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", std::string(8, 'x'),
             {"\"w\"", "non-negative integer"});
  expect_bad(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,8]}})", std::string(8, 'x'),
             {"\"w\"", "overflows"});
  expect_bad(R"({"w":{"dtype":"F32","shape":7,"data_offsets":[0,8]}})", std::string(8, 'x'),
             {"\"w\"", "shape must be an array"});
}

TEST_F(SafetensorsTest, OverlappingAndOutOfRangeOffsets) {
  expect_bad(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
             std::string(12, 'x'), {"\"a\"", "\"b\"", "overlap"});
  expect_bad(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", std::string(12, 'x'),
             {"\"a\"", "out of range"});
  expect_bad(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", std::string(12, 'x'),
             {"\"a\"", "end before begin"});
  expect_bad(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", std::string(8, 'x'),
             {"\"a\"", "data_offsets must be [begin, end]"});
  expect_bad(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551616]}})", std::string(8, 'x'),
             {"\"a\"", "non-negative integer"});
}

TEST_F(SafetensorsTest, StructuralErrors) {
  expect_bad(R"({"a":{"dtype":"F32","shape":[1]}})", "xxxx", {"\"a\"", "needs dtype, shape and data_offsets"});
  expect_bad(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"extra":1}})", "xxxx",
             {"\"a\"", "unknown key \"extra\""});
  expect_bad(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
             "xxxx", {"\"a\"", "appears twice"});
  expect_bad(R"({"a":{"dtype":"F32","shape":[[[1]]],"data_offsets":[0,4]}})", "xxxx", {"nested deeper"});
  expect_bad(std::string(100000, '[') + std::string(100000, ']'), "", {"nested deeper"});
  expect_bad(R"({"__metadata__":{"format":5}})", "", {"__metadata__", "\"format\"", "must be a string"});
  expect_bad(R"({"__metadata__":[1]})", "", {"__metadata__ must be an object"});
}

TEST_F(SafetensorsTest, ShardedCheckpointThroughIndex) {
  const std::vector<float> a = {1, 2, 3, 4}, b = {5, 6};
  write_safetensors(path("model-00001-of-00002.safetensors"), {{"x.a", DType::f32, {2, 2}, a.data()}});
  write_safetensors(path("model-00002-of-00002.safetensors"), {{"x.b", DType::f32, {2}, b.data()}});
  write_safetensors_index(path("model.safetensors.index.json"),
                          {{"x.a", "model-00001-of-00002.safetensors"}, {"x.b", "model-00002-of-00002.safetensors"}});
  Checkpoint c(dir_);
  EXPECT_EQ(c.file_count(), 2u);
  EXPECT_EQ(c.names(), (std::vector<std::string>{"x.a", "x.b"}));
  ASSERT_NE(c.find("x.b"), nullptr);
  EXPECT_EQ(reinterpret_cast<const float*>(c.find("x.b")->data())[1], 6.f);
  EXPECT_EQ(c.find("x.c"), nullptr);

  // The index names a shard that does not hold the tensor.
  write_safetensors_index(path("model.safetensors.index.json"),
                          {{"x.a", "model-00002-of-00002.safetensors"}, {"x.b", "model-00002-of-00002.safetensors"}});
  try {
    Checkpoint bad(dir_);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("lists tensor \"x.a\""), std::string::npos) << e.what();
  }
  // A shard path leaving the directory.
  write_safetensors_index(path("model.safetensors.index.json"), {{"x.a", "../model-00001-of-00002.safetensors"}});
  EXPECT_THROW(Checkpoint{dir_}, Error);
  // The same tensor in two shards.
  write_safetensors(path("model-00002-of-00002.safetensors"), {{"x.a", DType::f32, {2}, b.data()}});
  write_safetensors_index(path("model.safetensors.index.json"),
                          {{"x.a", "model-00001-of-00002.safetensors"}, {"y", "model-00002-of-00002.safetensors"}});
  try {
    Checkpoint bad(dir_);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is in both"), std::string::npos) << e.what();
  }
}

TEST_F(SafetensorsTest, SingleFileCheckpoint) {
  const std::vector<float> a = {1, 2};
  EXPECT_THROW(Checkpoint{dir_}, Error);  // neither index nor model.safetensors
  EXPECT_THROW(Checkpoint{path("missing")}, Error);
  write_safetensors(path("model.safetensors"), {{"w", DType::f32, {2}, a.data()}});
  EXPECT_NE(Checkpoint(dir_).find("w"), nullptr);
  EXPECT_NE(Checkpoint(path("model.safetensors")).find("w"), nullptr);
}

}  // namespace
}  // namespace mxmoe
