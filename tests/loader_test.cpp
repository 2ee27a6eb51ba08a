// The streaming loader with CPU destinations (the path CI can run): dtype conversion, TP slices,
// chunking through a tiny staging area, sharded checkpoints, dummy weights, and every bad input
// (missing tensor, wrong shape, NaN/Inf, unusable dtype, extra tensors) with its error text.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <filesystem>

#include "engine/error.h"
#include "engine/numerics.h"
#include "kernels/convert.h"
#include "loader/safetensors_writer.h"
#include "loader/weight_loader.h"
#include "loader/weight_set.h"
#include "loader/worker_pool.h"
#include "loader_test_util.h"
#include "test_util.h"

namespace mxmoe {
namespace {

namespace fs = std::filesystem;
using testing::converted;
using testing::for_each_staging;
using testing::fresh_seed;
using testing::PoisonedSet;
using testing::random_tensor;
using testing::same_bytes;

class LoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = make_temp_dir("mxmoe-loader-test");
    rng_.seed(fresh_seed());
    // Staging smaller than most tensors and not a multiple of their rows: chunks split tensors
    // mid-row and carry several tensors at once.
    options_.staging_bytes = 4096 + 48;
    options_.staging_buffers = 3;
    options_.copy_threads = 3;
    options_.quiet = true;
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes `tensors` (name -> CPU tensor) as model.safetensors and opens it.
  Checkpoint write(const std::vector<std::pair<std::string, Tensor>>& tensors) {
    std::vector<SafetensorsEntry> entries;
    for (const auto& [name, t] : tensors) entries.push_back({name, t.dtype(), t.shape(), t.data()});
    write_safetensors((fs::path(dir_) / "model.safetensors").string(), entries);
    return Checkpoint(dir_);
  }

  // Expects fn to throw an Error holding every part.
  template <class F>
  void expect_error(F&& fn, const std::vector<std::string>& parts) {
    try {
      fn();
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      for (const std::string& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << "\n  lacks: " << p;
    }
  }

  std::string dir_;
  std::mt19937_64 rng_;
  LoadOptions options_;
};

void expect_same_bytes(const Tensor& a, const Tensor& b, const std::string& what) {
  ASSERT_EQ(a.shape(), b.shape()) << what;
  ASSERT_EQ(a.dtype(), b.dtype()) << what;
  EXPECT_TRUE(same_bytes(a, b)) << what;
}

TEST_F(LoaderTest, ConvertsEveryFloatDtypeThroughTinyStaging) {
  const Tensor a = random_tensor({37, 29}, DType::bf16, rng_);   // odd sizes: rows cross chunk edges
  const Tensor b = random_tensor({64, 33}, DType::f32, rng_);
  const Tensor c = random_tensor({5, 7, 11}, DType::f16, rng_);
  const Tensor d = random_tensor({3}, DType::bf16, rng_);
  const Checkpoint ckpt = write({{"a", a}, {"b", b}, {"c", c}, {"d", d}});
  WeightSet bf16("bf16", {{"a", a.shape()}, {"b", b.shape()}, {"c", c.shape()}}, Device::cpu, DType::bf16, WeightSet::Mode::keep);
  WeightSet f32("f32", {{"a", a.shape()}, {"b", b.shape()}, {"c", c.shape()}, {"d", d.shape()}}, Device::cpu, DType::f32,
                WeightSet::Mode::keep);
  Loadable* layers[] = {&bf16, &f32};
  const LoadReport r = load_weights(ckpt, layers, options_);
  expect_same_bytes(bf16.weight(0), a, "a");
  expect_same_bytes(bf16.weight(1), converted(b, DType::bf16), "b f32->bf16");
  expect_same_bytes(bf16.weight(2), converted(c, DType::bf16), "c f16->bf16");
  expect_same_bytes(f32.weight(0), converted(a, DType::f32), "a bf16->f32");
  expect_same_bytes(f32.weight(1), b, "b");
  expect_same_bytes(f32.weight(2), converted(c, DType::f32), "c f16->f32");
  expect_same_bytes(f32.weight(3), converted(d, DType::f32), "d");
  EXPECT_EQ(r.tensors, 7u);
  EXPECT_EQ(r.bytes, 2 * a.nbytes() + 2 * b.nbytes() + 2 * c.nbytes() + d.nbytes());
  EXPECT_TRUE(r.unexpected.empty());
}

TEST_F(LoaderTest, TensorParallelSlicesAreSlicesOfTheFullTensor) {
  const Tensor w = random_tensor({8, 6, 10}, DType::f32, rng_);  // e.g. [experts, out, in]
  const Checkpoint ckpt = write({{"w", w}});
  for (int dim = 0; dim < 3; ++dim) {
    const int64_t tp = 2, len = w.size(dim) / tp;
    for (int64_t rank = 0; rank < tp; ++rank) {
      WeightSet s("shard", {{"w", w.shape(), {dim, rank * len, len}}}, Device::cpu, DType::f32, WeightSet::Mode::keep);
      Loadable* layers[] = {&s};
      load_weights(ckpt, layers, options_);
      Tensor expected = Tensor::empty(s.weight(0).shape(), DType::f32, Device::cpu);
      expected.copy_from(w.narrow(dim, rank * len, len));
      expect_same_bytes(s.weight(0), expected, cat("dim ", dim, " rank ", rank));
    }
  }
}

// Five layers of odd-sized tensors in three dtypes, whole and TP-sliced along each dimension,
// into bf16 and f32: the gatherer fills the staging buffers ahead of the copies and across layer
// boundaries, tensors and rows straddle buffers, and every byte must be the checkpoint slice's.
TEST_F(LoaderTest, ManyLayersThroughAnyStagingEqualTheCheckpointSlices) {
  constexpr int kLayers = 5, kPerLayer = 4;
  const DType dtypes[] = {DType::bf16, DType::f32, DType::f16};
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::vector<std::vector<WeightSpec>> specs(kLayers);
  std::vector<std::vector<Tensor>> expected(kLayers);  // each layer's slices, contiguous, in the checkpoint dtype
  for (int l = 0; l < kLayers; ++l)
    for (int k = 0; k < kPerLayer; ++k) {
      const std::string name = cat("model.layers.", l, ".w", k);
      const Tensor t = random_tensor({3 + l + k, 37 + 2 * k, 5 + k}, dtypes[(l + k) % 3], rng_);
      tensors.emplace_back(name, t);
      ShardSlice shard;  // k = 0: whole; k = 1, 2, 3: the middle of dim k - 1
      if (k > 0) shard = {k - 1, 1, t.size(k - 1) - 2};
      specs[size_t(l)].push_back({name, t.shape(), shard});
      expected[size_t(l)].push_back(k > 0 ? t.narrow(shard.dim, shard.begin, shard.length) : t);
    }
  const Checkpoint ckpt = write(tensors);
  // Staging of 4144 bytes splits tensors over buffers; 1 MiB holds a layer per buffer.
  for_each_staging(options_, {size_t(4096 + 48), size_t(1) << 20}, {1, 2, 5}, [&](const std::string& what) {
    std::vector<std::unique_ptr<PoisonedSet>> sets;
    std::vector<Loadable*> layers;
    for (int l = 0; l < kLayers; ++l) {
      sets.push_back(std::make_unique<PoisonedSet>(cat("layer ", l), specs[size_t(l)], Device::cpu,
                                                   l % 2 ? DType::f32 : DType::bf16, WeightSet::Mode::keep));
      layers.push_back(sets.back().get());
    }
    const LoadReport r = load_weights(ckpt, layers, options_);
    EXPECT_EQ(r.tensors, size_t(kLayers * kPerLayer));
    for (int l = 0; l < kLayers; ++l)
      for (int k = 0; k < kPerLayer; ++k) {
        const Tensor& want = expected[size_t(l)][size_t(k)];
        expect_same_bytes(sets[size_t(l)]->weight(size_t(k)), converted(want, l % 2 ? DType::f32 : DType::bf16),
                          cat("layer ", l, " w", k, ", ", what));
      }
  });
}

// An error in a later layer (NaN/Inf in a weight, a layer that cannot begin) while the gatherer
// runs ahead: the error reaches the caller, nothing hangs, and the next load works.
TEST_F(LoaderTest, AnErrorInALaterLayerStopsTheLoad) {
  constexpr int kLayers = 4;
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::vector<std::vector<WeightSpec>> specs(kLayers);
  for (int l = 0; l < kLayers; ++l)
    for (int k = 0; k < 2; ++k) {
      const std::string name = cat("model.layers.", l, ".w", k);
      tensors.emplace_back(name, random_tensor({16, 40}, DType::bf16, rng_));
      specs[size_t(l)].push_back({name, {16, 40}});
    }
  tensors[5].second.data_as<uint16_t>()[300] = 0x7fc0;  // NaN in model.layers.2.w1
  const Checkpoint ckpt = write(tensors);
  for (int buffers : {1, 3}) {
    options_.staging_buffers = buffers;
    const auto load = [&](int refusing, bool skip_nan_layer) {
      std::vector<std::unique_ptr<PoisonedSet>> sets;
      std::vector<Loadable*> layers;
      for (int l = 0; l < kLayers; ++l) {
        if (skip_nan_layer && l == 2) continue;
        sets.push_back(std::make_unique<PoisonedSet>(cat("layer ", l), specs[size_t(l)], Device::cpu, DType::bf16,
                                                     WeightSet::Mode::keep));
        sets.back()->refuse = l == refusing;
        layers.push_back(sets.back().get());
      }
      load_weights(ckpt, layers, options_);
    };
    expect_error([&] { load(-1, false); }, {"tensor model.layers.2.w1 in", "1 NaN/Inf"});
    expect_error([&] { load(3, true); }, {"layer 3: refusing to begin"});
    load(-1, true);
  }
}

TEST_F(LoaderTest, ShardedCheckpoint) {
  const Tensor a = random_tensor({16, 32}, DType::bf16, rng_), b = random_tensor({32}, DType::bf16, rng_);
  write_safetensors((fs::path(dir_) / "model-00001-of-00002.safetensors").string(), {{"a", DType::bf16, a.shape(), a.data()}});
  write_safetensors((fs::path(dir_) / "model-00002-of-00002.safetensors").string(), {{"b", DType::bf16, b.shape(), b.data()}});
  write_safetensors_index((fs::path(dir_) / "model.safetensors.index.json").string(),
                          {{"a", "model-00001-of-00002.safetensors"}, {"b", "model-00002-of-00002.safetensors"}});
  WeightSet s("layer", {{"a", a.shape()}, {"b", b.shape()}}, Device::cpu, DType::bf16, WeightSet::Mode::keep);
  Loadable* layers[] = {&s};
  load_weights(Checkpoint(dir_), layers, options_);
  expect_same_bytes(s.weight(0), a, "a");
  expect_same_bytes(s.weight(1), b, "b");
}

TEST_F(LoaderTest, MissingTensorAndOptional) {
  const Checkpoint ckpt = write({{"a", random_tensor({4, 32}, DType::bf16, rng_)}});
  WeightSet s("model.layers.0.mlp", {{"a", {4, 32}}, {"bias", {4}}}, Device::cpu, DType::bf16, WeightSet::Mode::keep);
  Loadable* layers[] = {&s};
  expect_error([&] { load_weights(ckpt, layers, options_); }, {"model.layers.0.mlp", "tensor bias is missing", dir_});
  WeightSpec optional{"bias", {4}};
  optional.optional = true;
  WeightSet o("layer", {{"a", {4, 32}}, optional}, Device::cpu, DType::bf16, WeightSet::Mode::keep);
  Loadable* ok[] = {&o};
  EXPECT_EQ(load_weights(ckpt, ok, options_).tensors, 1u);
}

TEST_F(LoaderTest, ShapeDisagreeingWithConfig) {
  const Checkpoint ckpt = write({{"w", random_tensor({4, 32}, DType::bf16, rng_)}});
  WeightSet s("model.layers.1.self_attn", {{"w", {4, 64}}}, Device::cpu, DType::bf16, WeightSet::Mode::keep);
  Loadable* layers[] = {&s};
  expect_error([&] { load_weights(ckpt, layers, options_); },
               {"tensor w", "model.safetensors", "[4, 32]", "[4, 64]", "model.layers.1.self_attn", "config.json"});
}

TEST_F(LoaderTest, NanOrInfInAWeightNamesTheTensor) {
  Tensor w = random_tensor({8, 32}, DType::bf16, rng_);
  w.data_as<uint16_t>()[77] = 0x7fc0;  // NaN
  Tensor v = random_tensor({8, 32}, DType::f32, rng_);
  v.data_as<float>()[200] = INFINITY;
  const Checkpoint ckpt = write({{"w", w}, {"v", v}});
  WeightSet a("layer", {{"w", w.shape()}}, Device::cpu, DType::bf16, WeightSet::Mode::keep);  // same dtype: checked copy
  Loadable* la[] = {&a};
  expect_error([&] { load_weights(ckpt, la, options_); }, {"tensor w in", "model.safetensors", "1 NaN/Inf"});
  WeightSet b("layer", {{"v", v.shape()}}, Device::cpu, DType::bf16, WeightSet::Mode::keep);  // converted
  Loadable* lb[] = {&b};
  expect_error([&] { load_weights(ckpt, lb, options_); }, {"tensor v in", "1 NaN/Inf"});
}

TEST_F(LoaderTest, UnusableDtypesAndBadShards) {
  std::vector<uint8_t> bytes(4 * 32, 7);
  write_raw_safetensors((fs::path(dir_) / "model.safetensors").string(),
                        R"({"ids":{"dtype":"I64","shape":[4],"data_offsets":[0,32]},)"
                        R"("q":{"dtype":"U8","shape":[4,32],"data_offsets":[32,160]}})",
                        std::string(32, '\0') + std::string(bytes.begin(), bytes.end()));
  const Checkpoint ckpt(dir_);
  WeightSet a("layer", {{"ids", {4}}}, Device::cpu, DType::f32, WeightSet::Mode::keep);
  Loadable* la[] = {&a};
  expect_error([&] { load_weights(ckpt, la, options_); }, {"tensor ids", "I64", "cannot load"});
  WeightSet b("layer", {{"q", {4, 32}}}, Device::cpu, DType::bf16, WeightSet::Mode::keep);
  Loadable* lb[] = {&b};
  expect_error([&] { load_weights(ckpt, lb, options_); }, {"tensor q", "U8", "wants bf16"});
  WeightSet c("layer", {{"q", {4, 32}}}, Device::cpu, DType::u8, WeightSet::Mode::keep);  // passthrough
  Loadable* lc[] = {&c};
  load_weights(ckpt, lc, options_);
  EXPECT_EQ(std::memcmp(c.weight(0).data(), bytes.data(), bytes.size()), 0);
  WeightSet d("layer", {{"q", {4, 32}, {1, 16, 32}}}, Device::cpu, DType::u8, WeightSet::Mode::keep);
  Loadable* ld[] = {&d};
  expect_error([&] { load_weights(ckpt, ld, options_); }, {"shard of q", "outside its shape"});
}

TEST_F(LoaderTest, ExtraTensorsAreReported) {
  const Checkpoint ckpt = write({{"a", random_tensor({2, 32}, DType::bf16, rng_)},
                                 {"rotary.inv_freq", random_tensor({4}, DType::f32, rng_)},
                                 {"z.extra", random_tensor({4}, DType::f32, rng_)}});
  WeightSet s("layer", {{"a", {2, 32}}}, Device::cpu, DType::bf16, WeightSet::Mode::keep);
  Loadable* layers[] = {&s};
  ::testing::internal::CaptureStderr();
  const LoadReport r = load_weights(ckpt, layers, options_);
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(r.unexpected, (std::vector<std::string>{"rotary.inv_freq", "z.extra"}));
  EXPECT_NE(err.find("2 tensor(s) not used by the model: rotary.inv_freq, z.extra"), std::string::npos) << err;
}

TEST_F(LoaderTest, Mxfp8NeedsInputSizeDivisibleBy32) {
  expect_error([] { WeightSet("model.layers.2.mlp", {{"w", {64, 48}}}, Device::cuda, DType::bf16, WeightSet::Mode::mxfp8); },
               {"model.layers.2.mlp", "[64, 48]", "divisible by 32"});
}

TEST_F(LoaderTest, DummyWeightsOnTheCpu) {
  WeightSpec w{"w", {64, 256}};
  w.dummy_std = 0.5f;
  w.dummy_mean = 1.f;
  WeightSet full("full", {w}, Device::cpu, DType::f32, WeightSet::Mode::keep);
  WeightSpec half = w;
  half.shard = {1, 128, 128};
  WeightSet shard("shard", {half}, Device::cpu, DType::f32, WeightSet::Mode::keep);
  Loadable* layers[] = {&full, &shard};
  options_.seed = 1234;
  load_dummy_weights(layers, options_);
  const std::vector<float> v = to_f32_vector(full.weight(0));
  double sum = 0, sq = 0;
  for (float x : v) sum += x, sq += double(x) * x;
  const double mean = sum / v.size(), std = std::sqrt(sq / v.size() - mean * mean);
  EXPECT_NEAR(mean, 1.0, 0.02);
  EXPECT_NEAR(std, 0.5, 0.02);
  Tensor expected = Tensor::empty({64, 128}, DType::f32, Device::cpu);
  expected.copy_from(full.weight(0).narrow(1, 128, 128));
  expect_same_bytes(shard.weight(0), expected, "dummy shard is the slice of the full tensor");
}

TEST_F(LoaderTest, LoadFormatByName) {
  const Tensor a = random_tensor({4, 32}, DType::bf16, rng_);
  write({{"a", a}});
  WeightSet s("layer", {{"a", a.shape()}}, Device::cpu, DType::bf16, WeightSet::Mode::keep);
  Loadable* layers[] = {&s};
  load_weights(dir_, parse_load_format("auto"), layers, options_);
  expect_same_bytes(s.weight(0), a, "safetensors");
  load_weights("/nonexistent", parse_load_format("dummy"), layers, options_);
  EXPECT_FALSE(std::memcmp(s.weight(0).data(), a.data(), a.nbytes()) == 0) << "dummy values replace the checkpoint's";
  expect_error([] { parse_load_format("pt"); }, {"\"pt\"", "safetensors, auto, dummy"});
}

TEST(WorkerPool, RunsEveryIndexOnceAndRethrows) {
  WorkerPool pool(4);
  for (size_t n : {size_t(1), size_t(7), size_t(1000)}) {
    std::vector<std::atomic<int>> hits(n);
    pool.run(n, [&](size_t i) { hits[i]++; });
    for (size_t i = 0; i < n; ++i) EXPECT_EQ(hits[i].load(), 1) << "n " << n << " i " << i;
  }
  EXPECT_THROW(pool.run(50, [](size_t i) { if (i == 17) fail("boom"); }), Error);
  std::atomic<int> after{0};
  pool.run(10, [&](size_t) { after++; });  // still usable after an error
  EXPECT_EQ(after.load(), 10);
}

}  // namespace
}  // namespace mxmoe
