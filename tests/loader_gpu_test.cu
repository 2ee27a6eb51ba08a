// The streaming loader on the GPU:
//  - a bf16 checkpoint larger than a memory cap loads into MXFP8 under that cap, peak within
//    quantized + one layer in bf16 + staging, and the quantized weights equal
//    mxfp8_quantize_ref of the checkpoint data bit for bit;
//  - TP shards (column / row / expert slices) equal the slices of the full tensor;
//  - dummy weights: statistics, same seed -> same bits, shard = slice of the full tensor;
//  - NaN/Inf in a weight is an error naming it on the GPU paths too;
//  - many layers through staging of any size and count (the gatherer running ahead of the DMAs,
//    conversions through the GPU scratch) deliver exactly the checkpoint slices, and an error in
//    a later layer stops the load cleanly.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "engine/error.h"
#include "kernels/convert.h"
#include "loader/safetensors_writer.h"
#include "loader/weight_loader.h"
#include "loader/weight_set.h"
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

class LoaderGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = make_temp_dir("mxmoe-loader-gpu-test");
    rng_.seed(fresh_seed());
    options_.quiet = true;
  }
  void TearDown() override {
    fs::remove_all(dir_);
    if (cuda_available()) set_device_memory_limit(current_device(), 0);
  }

  Checkpoint write(const std::vector<std::pair<std::string, Tensor>>& tensors) {
    std::vector<SafetensorsEntry> entries;
    for (const auto& [name, t] : tensors) entries.push_back({name, t.dtype(), t.shape(), t.data()});
    write_safetensors((fs::path(dir_) / "model.safetensors").string(), entries);
    return Checkpoint(dir_);
  }

  std::string dir_;
  std::mt19937_64 rng_;
  LoadOptions options_;
};

// (nvcc warns about WeightSpec aggregates that leave fields to their defaults.)
WeightSpec spec(const std::string& name, const Shape& shape, ShardSlice shard = {}) {
  WeightSpec s;
  s.name = name;
  s.shape = shape;
  s.shard = shard;
  return s;
}


TEST_F(LoaderGpuTest, CheckpointLargerThanTheCapLoadsIntoMxfp8) {
  MXMOE_REQUIRE_GPU();
  // 8 layers of three weights; one comes as f32 (converted on the GPU through the scratch).
  constexpr int kLayers = 8;
  const Shape up{1024, 4096}, down{4096, 1024};
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::vector<std::unique_ptr<WeightSet>> sets;
  std::vector<Loadable*> layers;
  size_t bf16_total = 0, largest_layer_bf16 = 0;
  for (int l = 0; l < kLayers; ++l) {
    const std::string p = cat("model.layers.", l, ".mlp.");
    tensors.emplace_back(p + "gate_proj.weight", random_tensor(up, DType::bf16, rng_, 0.02f));
    tensors.emplace_back(p + "up_proj.weight", random_tensor(up, DType::f32, rng_, 0.02f));
    tensors.emplace_back(p + "down_proj.weight", random_tensor(down, DType::bf16, rng_, 0.02f));
    sets.push_back(std::make_unique<WeightSet>(
        p, std::vector<WeightSpec>{spec(p + "gate_proj.weight", up), spec(p + "up_proj.weight", up), spec(p + "down_proj.weight", down)},
        Device::cuda, DType::bf16, WeightSet::Mode::mxfp8));
    layers.push_back(sets.back().get());
    const size_t layer_bytes = 3 * size_t(1024 * 4096) * 2;
    bf16_total += layer_bytes;
    largest_layer_bf16 = std::max(largest_layer_bf16, layer_bytes);
  }
  const Checkpoint ckpt = write(tensors);
  const size_t quantized_total = kLayers * 3 * size_t(1024 * 4096) * (1 + 1 / 32.0);
  options_.staging_bytes = 4 << 20;
  options_.staging_buffers = 2;
  const size_t staging = options_.staging_bytes * options_.staging_buffers;
  const size_t slack = 64 << 10;  // the per-layer NaN counters and mxfp8_quantize_weight's counter
  const int device = current_device();
  const size_t before = device_memory_stats(device).in_use;
  const size_t bound = quantized_total + largest_layer_bf16 + staging + slack;
  ASSERT_GT(bf16_total, bound) << "the test must load more bf16 than fits under the cap";
  options_.gpu_memory_limit = before + bound;

  const LoadReport r = load_weights(ckpt, layers, options_);
  EXPECT_LE(r.peak_gpu_bytes - before, bound);
  EXPECT_GE(r.peak_gpu_bytes - before, quantized_total) << "peak below the final footprint: accounting is off";
  size_t quantized = 0;
  for (const auto& s : sets) quantized += s->quantized_bytes();
  EXPECT_EQ(quantized, quantized_total);
  EXPECT_EQ(r.resident_gpu_bytes - before, quantized_total);
  std::printf("bf16 %.1f MiB under a cap of %.1f MiB: peak %.1f MiB, resident %.1f MiB\n", bf16_total / 1048576.0,
              bound / 1048576.0, (r.peak_gpu_bytes - before) / 1048576.0, (r.resident_gpu_bytes - before) / 1048576.0);

  // Bit for bit against the CPU reference quantizer on the checkpoint data (as bf16, the layer's dtype).
  for (int l = 0; l < kLayers; ++l)
    for (int i = 0; i < 3; ++i) {
      const Tensor& src = tensors[size_t(3 * l + i)].second;
      const MxTensor ref = mxfp8_empty(src.shape(), Device::cpu);
      mxfp8_quantize_ref(converted(src, DType::bf16), ref, ScaleRule::rceil);
      const MxTensor& q = sets[size_t(l)]->quantized(size_t(i));
      EXPECT_TRUE(same_bytes(q.elems, ref.elems)) << tensors[size_t(3 * l + i)].first;
      EXPECT_TRUE(same_bytes(q.scales, ref.scales)) << tensors[size_t(3 * l + i)].first;
    }

  // Without the streaming (the whole bf16 model at once) the same cap must not be enough.
  WeightSet all("all", [&] {
    std::vector<WeightSpec> specs;
    for (const auto& [name, t] : tensors) specs.push_back(spec(name, t.shape()));
    return specs;
  }(), Device::cuda, DType::bf16, WeightSet::Mode::keep);
  EXPECT_THROW(all.begin_loading(), Error);
}

TEST_F(LoaderGpuTest, TensorParallelShardsAreSlicesOfTheFullTensor) {
  MXMOE_REQUIRE_GPU();
  const Tensor qkv = random_tensor({768, 512}, DType::bf16, rng_);        // column-parallel: dim 0
  const Tensor o = random_tensor({512, 768}, DType::f32, rng_);           // row-parallel: dim 1 (converted)
  const Tensor experts = random_tensor({8, 256, 512}, DType::bf16, rng_); // expert-parallel: dim 0
  const Tensor w13 = random_tensor({4, 384, 256}, DType::f16, rng_);      // intermediate split: dim 1
  const Checkpoint ckpt = write({{"qkv", qkv}, {"o", o}, {"experts", experts}, {"w13", w13}});
  options_.staging_bytes = 1 << 20;
  for (int tp : {2, 4}) {
    for (int rank = 0; rank < tp; ++rank) {
      const auto part = [&](const Tensor& t, int dim) {
        const int64_t len = t.size(dim) / tp;
        return std::pair<WeightSpec, Tensor>{spec("", t.shape(), {dim, rank * len, len}), t.narrow(dim, rank * len, len)};
      };
      std::vector<std::pair<WeightSpec, Tensor>> parts = {part(qkv, 0), part(o, 1), part(experts, 0), part(w13, 1)};
      const char* names[] = {"qkv", "o", "experts", "w13"};
      std::vector<WeightSpec> specs;
      for (size_t i = 0; i < parts.size(); ++i) {
        parts[i].first.name = names[i];
        specs.push_back(parts[i].first);
      }
      WeightSet s("rank", specs, Device::cuda, DType::bf16, WeightSet::Mode::keep);
      Loadable* layers[] = {&s};
      load_weights(ckpt, layers, options_);
      for (size_t i = 0; i < parts.size(); ++i) {
        Tensor slice = Tensor::empty(parts[i].second.shape(), parts[i].second.dtype(), Device::cpu);
        slice.copy_from(parts[i].second);
        EXPECT_TRUE(same_bytes(s.weight(i), converted(slice, DType::bf16))) << names[i] << " tp " << tp << " rank " << rank;
      }
    }
  }
}

TEST_F(LoaderGpuTest, DummyWeights) {
  MXMOE_REQUIRE_GPU();
  WeightSpec w = spec("model.layers.0.mlp.down_proj.weight", {2048, 1024});
  w.dummy_std = 0.02f;
  WeightSpec norm = spec("model.layers.0.input_layernorm.weight", {2048});
  norm.dummy_mean = 1.f;
  norm.dummy_std = 0.01f;
  WeightSpec shard = w;
  shard.shard = {1, 512, 512};
  WeightSpec other = w;
  other.name = "model.layers.1.mlp.down_proj.weight";
  const auto load = [&](uint64_t seed) {
    auto s = std::make_unique<WeightSet>("layer", std::vector<WeightSpec>{w, norm, shard, other}, Device::cuda, DType::f32,
                                         WeightSet::Mode::keep);
    Loadable* layers[] = {s.get()};
    options_.seed = seed;
    load_dummy_weights(layers, options_);
    return s;
  };
  const uint64_t seed = fresh_seed();
  const auto a = load(seed), b = load(seed), c = load(seed + 1);
  const Tensor full = a->weight(0).to(Device::cpu);
  const auto stats = [](const Tensor& t) {
    double sum = 0, sq = 0;
    for (float x : to_f32_vector(t)) sum += x, sq += double(x) * x;
    const double mean = sum / double(t.numel());
    return std::pair<double, double>{mean, std::sqrt(sq / double(t.numel()) - mean * mean)};
  };
  const auto [mean, std] = stats(full);
  EXPECT_NEAR(mean, 0.0, 0.02 * 0.005);
  EXPECT_NEAR(std / 0.02, 1.0, 0.005);
  const auto [norm_mean, norm_std] = stats(a->weight(1).to(Device::cpu));
  EXPECT_NEAR(norm_mean, 1.0, 0.01 * 0.2);
  EXPECT_NEAR(norm_std / 0.01, 1.0, 0.1);
  EXPECT_TRUE(same_bytes(a->weight(0), b->weight(0))) << "same seed, same values";
  EXPECT_FALSE(same_bytes(a->weight(0), c->weight(0))) << "another seed, other values";
  EXPECT_FALSE(same_bytes(a->weight(0), a->weight(3))) << "tensors of one seed differ";
  Tensor slice = Tensor::empty({2048, 512}, DType::f32, Device::cpu);
  slice.copy_from(full.narrow(1, 512, 512));
  EXPECT_TRUE(same_bytes(a->weight(2), slice)) << "a shard is the slice of the full dummy tensor";
  WeightSet cpu("layer", {w}, Device::cpu, DType::f32, WeightSet::Mode::keep);
  Loadable* layers[] = {&cpu};
  options_.seed = seed;
  load_dummy_weights(layers, options_);
  EXPECT_TRUE(same_bytes(a->weight(0), cpu.weight(0))) << "GPU dummy weights equal the CPU reference's";
}

TEST_F(LoaderGpuTest, NanOrInfNamesTheTensor) {
  MXMOE_REQUIRE_GPU();
  Tensor w = random_tensor({64, 64}, DType::bf16, rng_);
  w.data_as<uint16_t>()[1000] = 0xff80;  // -Inf
  Tensor v = random_tensor({64, 64}, DType::f32, rng_);
  v.data_as<float>()[5] = NAN;
  v.data_as<float>()[6] = NAN;
  const Checkpoint ckpt = write({{"w", w}, {"v", v}});
  for (const char* name : {"w", "v"}) {
    for (WeightSet::Mode mode : {WeightSet::Mode::keep, WeightSet::Mode::mxfp8}) {
      WeightSet s("layer", {spec(name, {64, 64})}, Device::cuda, DType::bf16, mode);
      Loadable* layers[] = {&s};
      try {
        load_weights(ckpt, layers, options_);
        ADD_FAILURE() << "no error for " << name;
      } catch (const Error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find(cat("tensor ", name, " in ")), std::string::npos) << msg;
        EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
        EXPECT_NE(msg.find(name[0] == 'w' ? "1 NaN/Inf" : "2 NaN/Inf"), std::string::npos) << msg;
      }
    }
  }
}

TEST_F(LoaderGpuTest, ManyLayersThroughAnyStagingEqualTheCheckpointSlices) {
  MXMOE_REQUIRE_GPU();
  // Six layers: bf16 (DMA straight into the destination), f32 and f16 (through the scratch and
  // the conversion kernel), whole and TP-sliced along each dimension, odd sizes.
  constexpr int kLayers = 6, kPerLayer = 4;
  const DType dtypes[] = {DType::bf16, DType::f32, DType::f16};
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::vector<std::vector<WeightSpec>> specs(kLayers);
  std::vector<std::vector<Tensor>> expected(kLayers);  // bf16, contiguous
  for (int l = 0; l < kLayers; ++l)
    for (int k = 0; k < kPerLayer; ++k) {
      const std::string name = cat("model.layers.", l, ".w", k);
      const Tensor t = random_tensor({5 + l + k, 97 + 2 * k, 31 + k}, dtypes[(l + k) % 3], rng_);
      tensors.emplace_back(name, t);
      ShardSlice shard;  // k = 0: whole; k = 1, 2, 3: the middle of dim k - 1
      if (k > 0) shard = {k - 1, 1, t.size(k - 1) - 2};
      specs[size_t(l)].push_back(spec(name, t.shape(), shard));
      expected[size_t(l)].push_back(converted(k > 0 ? t.narrow(shard.dim, shard.begin, shard.length) : t, DType::bf16));
    }
  tensors[10].second.data_as<float>()[123] = INFINITY;  // model.layers.2.w2 (f32), used at the end only
  const Checkpoint ckpt = write(tensors);
  const auto layer_set = [&](int l) {
    return std::make_unique<PoisonedSet>(cat("layer ", l), specs[size_t(l)], Device::cuda, DType::bf16, WeightSet::Mode::keep);
  };
  for_each_staging(options_, {size_t(64 << 10) + 48, size_t(4) << 20}, {1, 2, 4}, [&](const std::string& what) {
    std::vector<std::unique_ptr<PoisonedSet>> sets;
    std::vector<Loadable*> layers;
    for (int l = 0; l < kLayers; ++l) {
      if (l == 2) continue;  // the Inf
      sets.push_back(layer_set(l));
      layers.push_back(sets.back().get());
    }
    load_weights(ckpt, layers, options_);
    for (size_t i = 0; i < sets.size(); ++i)
      for (int k = 0; k < kPerLayer; ++k) {
        const int l = int(i) + (i >= 2);
        EXPECT_TRUE(same_bytes(sets[i]->weight(size_t(k)), expected[size_t(l)][size_t(k)]))
            << "layer " << l << " w" << k << ", " << what;
      }
  });
  std::vector<std::unique_ptr<PoisonedSet>> sets;
  std::vector<Loadable*> layers;
  for (int l = 0; l < kLayers; ++l) {
    sets.push_back(layer_set(l));
    layers.push_back(sets.back().get());
  }
  try {
    load_weights(ckpt, layers, options_);
    ADD_FAILURE() << "no error for the Inf in layer 2";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor model.layers.2.w2 in"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("1 NaN/Inf"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mxmoe
