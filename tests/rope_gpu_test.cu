// RoPE kernel vs the CPU reference: every rope type's frequencies, positions up to 131k, and q/k
// given as strided views of a fused QKV buffer (rotated in place, v untouched).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "engine/stream.h"
#include "kernels/rope.h"
#include "loader/rope_config.h"
#include "test_util.h"

using namespace mxmoe;
using mxmoe::testing::fresh_seed;
using mxmoe::testing::random_tensor;
using mxmoe::testing::rel_error;

TEST(RopeGpu, MatchesReferenceForEveryRopeType) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  Stream stream;
  const std::vector<std::pair<const char*, int>> configs = {
      {R"({"rope_theta": 1000000, "max_position_embeddings": 40960})", 128},
      {R"({"rope_theta": 10000, "rope_scaling": {"type": "linear", "factor": 2.0}})", 64},
      {R"({"rope_theta": 10000, "max_position_embeddings": 4096, "rope_scaling": {"type": "dynamic", "factor": 4.0}})", 128},
      {R"({"rope_theta": 1000000, "max_position_embeddings": 131072, "rope_scaling": {"rope_type": "yarn", "factor": 4.0,
          "original_max_position_embeddings": 32768}})", 128},
      {R"({"rope_theta": 500000, "max_position_embeddings": 131072, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
          "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}})", 128},
  };
  for (const auto& [text, hd] : configs) {
    const RopeFrequencies f = rope_frequencies(parse_rope_config(nlohmann::json::parse(text), hd), 20000);
    Tensor inv = Tensor::empty({hd / 2}, DType::f32, Device::cpu);
    std::copy(f.inv_freq.begin(), f.inv_freq.end(), inv.data_as<float>());
    const int64_t t = 37, hq = 32, hk = 4, width = (hq + 2 * hk) * hd;
    Tensor qkv = random_tensor({t, width}, DType::bf16, rng);
    Tensor pos = Tensor::empty({t}, DType::i32, Device::cpu);
    for (int64_t i = 0; i < t; ++i) pos.data_as<int32_t>()[i] = int32_t(i < 20 ? i : rng() % 131072);
    const Tensor qkv_d = qkv.to(Device::cuda), pos_d = pos.to(Device::cuda), inv_d = inv.to(Device::cuda);
    const auto q_of = [&](const Tensor& x) { return x.narrow(1, 0, hq * hd); };
    const auto k_of = [&](const Tensor& x) { return x.narrow(1, hq * hd, hk * hd); };
    // rope takes [T, heads, head_dim]: strided 3-D views built by narrowing a [T, heads_total, hd] view.
    const Tensor qkv3 = qkv.view({t, hq + 2 * hk, int64_t(hd)}), qkv3_d = qkv_d.view({t, hq + 2 * hk, int64_t(hd)});
    rope_ref(qkv3.narrow(1, 0, hq), qkv3.narrow(1, hq, hk), pos, inv, f.attention_scaling);
    rope(qkv3_d.narrow(1, 0, hq), qkv3_d.narrow(1, hq, hk), pos_d, inv_d, f.attention_scaling, stream);
    stream.synchronize();
    EXPECT_LT(rel_error(q_of(qkv_d).to(Device::cpu), q_of(qkv).to(Device::cpu)), 2e-3) << text;
    EXPECT_LT(rel_error(k_of(qkv_d).to(Device::cpu), k_of(qkv).to(Device::cpu)), 2e-3) << text;
    EXPECT_EQ(rel_error(qkv_d.narrow(1, (hq + hk) * hd, hk * hd).to(Device::cpu),
                        qkv.narrow(1, (hq + hk) * hd, hk * hd).to(Device::cpu)), 0.0) << "v changed";
  }
}
