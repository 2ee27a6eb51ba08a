// RoPE host side and CPU reference: config parsing (old rope_scaling and new rope_parameters),
// the inverse frequencies of each rope type against their defining formulas, and properties of the
// rotation (identity at position 0, norm kept, scores depend on relative position only).
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "engine/error.h"
#include "engine/numerics.h"
#include "kernels/rope.h"
#include "loader/rope_config.h"
#include "test_util.h"

using namespace mxmoe;
using mxmoe::testing::fresh_seed;
using mxmoe::testing::random_tensor;

namespace {

RopeConfig parse(const char* text, int head_dim = 128) { return parse_rope_config(nlohmann::json::parse(text), head_dim); }

double default_freq(double theta, int i, int dim) { return std::pow(theta, -2.0 * i / dim); }

}  // namespace

TEST(RopeFrequencies, DefaultAndLinear) {
  const RopeConfig c = parse(R"({"rope_theta": 1000000.0, "max_position_embeddings": 40960})");
  EXPECT_EQ(c.type, RopeType::default_rope);
  const RopeFrequencies f = rope_frequencies(c);
  ASSERT_EQ(f.inv_freq.size(), 64u);
  EXPECT_EQ(f.attention_scaling, 1.f);
  for (int i = 0; i < 64; ++i) EXPECT_NEAR(f.inv_freq[size_t(i)], default_freq(1e6, i, 128), 1e-6 * default_freq(1e6, i, 128));
  const RopeFrequencies lin = rope_frequencies(parse(R"({"rope_theta": 10000, "rope_scaling": {"type": "linear", "factor": 4.0}})"));
  for (int i = 0; i < 64; ++i) EXPECT_NEAR(lin.inv_freq[size_t(i)], default_freq(1e4, i, 128) / 4, 1e-6 * default_freq(1e4, i, 128));
}

TEST(RopeFrequencies, DynamicRescalesBaseOnlyPastMaxPositions) {
  const RopeConfig c = parse(R"({"rope_theta": 10000, "max_position_embeddings": 2048,
                                 "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}})");
  const RopeFrequencies short_seq = rope_frequencies(c, 1000), base = rope_frequencies(parse(R"({"rope_theta": 10000})"));
  EXPECT_EQ(short_seq.inv_freq, base.inv_freq);
  const RopeFrequencies long_seq = rope_frequencies(c, 8192);
  const double new_base = 10000 * std::pow(2.0 * 8192 / 2048 - 1, 128.0 / 126.0);
  for (int i = 0; i < 64; ++i) EXPECT_NEAR(long_seq.inv_freq[size_t(i)], default_freq(new_base, i, 128), 2e-6 * default_freq(new_base, i, 128));
}

TEST(RopeFrequencies, Llama3KeepsHighAndScalesLowFrequencies) {
  // Llama-3.1-8B's values.
  const RopeConfig c = parse(R"({"rope_theta": 500000.0, "max_position_embeddings": 131072, "rope_scaling": {
      "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
      "rope_type": "llama3"}})");
  const RopeFrequencies f = rope_frequencies(c);
  for (int i = 0; i < 64; ++i) {
    const double base = default_freq(5e5, i, 128), wavelen = 2 * M_PI / base;
    double expect = base;
    if (wavelen > 8192) expect = base / 8;
    else if (wavelen >= 8192 / 4.0) {
      const double smooth = (8192 / wavelen - 1) / (4 - 1);
      expect = (1 - smooth) * base / 8 + smooth * base;
    }
    EXPECT_NEAR(f.inv_freq[size_t(i)], expect, 1e-5 * expect) << i;
  }
}

TEST(RopeFrequencies, YarnRampsFromExtrapolationToInterpolation) {
  const RopeConfig c = parse(R"({"rope_theta": 1000000, "max_position_embeddings": 131072, "rope_scaling": {
      "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}})");
  const RopeFrequencies f = rope_frequencies(c);
  EXPECT_NEAR(f.attention_scaling, 0.1 * std::log(4.0) + 1.0, 1e-6);
  // Correction range (truncated): dims below `low` keep the original frequency, above `high` are divided by the factor.
  const auto corr = [](double rot) { return 128 * std::log(32768 / (rot * 2 * M_PI)) / (2 * std::log(1e6)); };
  const int low = int(std::floor(corr(32))), high = int(std::ceil(corr(1)));
  for (int i = 0; i < 64; ++i) {
    const double base = default_freq(1e6, i, 128);
    if (i <= low) {
      EXPECT_NEAR(f.inv_freq[size_t(i)], base, 1e-6 * base) << i;
    } else if (i >= high) {
      EXPECT_NEAR(f.inv_freq[size_t(i)], base / 4, 1e-6 * base) << i;
    }
  }
  const RopeConfig m = parse(R"({"rope_theta": 10000, "max_position_embeddings": 4096, "rope_scaling": {
      "type": "yarn", "factor": 40, "mscale": 1.0, "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096}})");
  EXPECT_NEAR(rope_frequencies(m).attention_scaling, (0.1 * std::log(40) + 1) / (0.1 * 0.707 * std::log(40) + 1), 1e-6);
}

TEST(RopeFrequencies, NewStyleRopeParametersAndErrors) {
  const RopeConfig c = parse(R"({"rope_parameters": {"rope_type": "default", "rope_theta": 5000.0}})");
  EXPECT_EQ(c.theta, 5000.0);
  EXPECT_THROW(parse(R"({"rope_scaling": {"rope_type": "longrope", "factor": 2}})"), Error);
  EXPECT_THROW(parse(R"({"rope_scaling": {"rope_type": "banana"}})"), Error);
  EXPECT_THROW(parse(R"({"partial_rotary_factor": 0.5})"), Error);
  EXPECT_THROW(parse(R"({"rope_scaling": {"rope_type": "linear"}})"), Error);  // no factor
}

TEST(RopeRef, RotationProperties) {
  std::mt19937_64 rng(fresh_seed());
  const int64_t hd = 64;
  const RopeFrequencies f = rope_frequencies(parse(R"({"rope_theta": 10000})", int(hd)));
  Tensor inv = Tensor::empty({hd / 2}, DType::f32, Device::cpu);
  std::copy(f.inv_freq.begin(), f.inv_freq.end(), inv.data_as<float>());
  // The same q and k vectors at positions (p, p + 7) for several p: q·k is the same for all p.
  const Tensor q0 = random_tensor({1, 1, hd}, DType::bf16, rng), k0 = random_tensor({1, 1, hd}, DType::bf16, rng);
  const std::vector<int32_t> starts = {0, 5, 100, 3000};
  const int64_t n = int64_t(starts.size());
  Tensor q = Tensor::empty({n, 1, hd}, DType::bf16, Device::cpu), k = Tensor::empty({n, 1, hd}, DType::bf16, Device::cpu);
  Tensor qpos = Tensor::empty({n}, DType::i32, Device::cpu), kpos = Tensor::empty({n}, DType::i32, Device::cpu);
  for (int64_t i = 0; i < n; ++i) {
    std::copy_n(q0.data_as<uint16_t>(), hd, q.data_as<uint16_t>() + i * hd);
    std::copy_n(k0.data_as<uint16_t>(), hd, k.data_as<uint16_t>() + i * hd);
    qpos.data_as<int32_t>()[i] = starts[size_t(i)] + 7;
    kpos.data_as<int32_t>()[i] = starts[size_t(i)];
  }
  Tensor dummy = Tensor::empty({n, 1, hd}, DType::bf16, Device::cpu);
  rope_ref(q, dummy, qpos, inv, 1.f);
  rope_ref(k, dummy, kpos, inv, 1.f);
  const std::vector<float> qv = to_f32_vector(q), kv = to_f32_vector(k), q0v = to_f32_vector(q0);
  double norm0 = 0;
  for (float v : q0v) norm0 += double(v) * v;
  std::vector<double> dots;
  for (int64_t i = 0; i < n; ++i) {
    double dot = 0, norm = 0;
    for (int64_t j = 0; j < hd; ++j) {
      dot += double(qv[size_t(i * hd + j)]) * kv[size_t(i * hd + j)];
      norm += double(qv[size_t(i * hd + j)]) * qv[size_t(i * hd + j)];
    }
    dots.push_back(dot);
    EXPECT_NEAR(std::sqrt(norm), std::sqrt(norm0), 0.01 * std::sqrt(norm0));
  }
  for (double d : dots) EXPECT_NEAR(d, dots[0], 0.03 * std::sqrt(norm0) * 8);  // bf16 rounding of both sides
  // Position 0 is the identity.
  Tensor z = q0.to(Device::cpu), zpos = Tensor::empty({1}, DType::i32, Device::cpu), zd = Tensor::empty({1, 1, hd}, DType::bf16, Device::cpu);
  zpos.data_as<int32_t>()[0] = 0;
  rope_ref(z, zd, zpos, inv, 1.f);
  EXPECT_EQ(to_f32_vector(z), q0v);
}
