// RoPE kernel vs the CPU reference: every rope type's frequencies, positions up to 131k, and q/k
// given as strided views of a fused QKV buffer (rotated in place, v untouched); and the fused
// QK-norm + rope + KV-cache write against the separate ops.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <numeric>
#include <string>

#include "engine/ops.h"
#include "engine/stream.h"
#include "kernels/attention.h"
#include "kernels/rmsnorm.h"
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

// The fused QK-norm + rope + KV-cache write against the separate ops: the CPU reference chain
// (through ops, as the CPU backend runs it) and the separate GPU kernels (bit for bit: the same
// sums in the same order), with and without the norm, on q/k/v views of one fused QKV buffer.
TEST(RopeGpu, FusedQkNormRopeKvWriteMatchesSeparateOps) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  Stream stream;
  struct Case {
    int64_t t, hq, hk, hd;
    bool norm;
  };
  for (const Case& c : {Case{1, 32, 4, 128, true}, Case{5, 32, 4, 128, true}, Case{300, 32, 4, 128, true},
                        Case{3, 32, 8, 128, false}, Case{7, 14, 2, 64, true}, Case{2, 8, 8, 256, true},
                        Case{9, 16, 16, 256, false}}) {
    RopeConfig rc;
    rc.theta = 1e6;
    rc.head_dim = int(c.hd);
    const RopeFrequencies f = rope_frequencies(rc);
    Tensor inv = Tensor::empty({c.hd / 2}, DType::f32, Device::cpu);
    std::copy(f.inv_freq.begin(), f.inv_freq.end(), inv.data_as<float>());
    const int64_t heads = c.hq + 2 * c.hk, bs = 16, blocks = c.t / bs + 4;
    Tensor qkv = random_tensor({c.t, heads, c.hd}, DType::bf16, rng, 2.f);  // [T, q | k | v heads, hd]
    Tensor kc = random_tensor({blocks, c.hk, bs, c.hd}, DType::bf16, rng), vc = random_tensor(kc.shape(), DType::bf16, rng);
    Tensor pos = Tensor::empty({c.t}, DType::i32, Device::cpu), slots = Tensor::empty({c.t}, DType::i32, Device::cpu);
    std::vector<int32_t> order(size_t(blocks * bs));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    for (int64_t i = 0; i < c.t; ++i) {
      pos.data_as<int32_t>()[i] = int32_t(rng() % 40000);
      slots.data_as<int32_t>()[i] = i == 1 ? -1 : order[size_t(i)];  // token 1 (if any) is not stored
    }
    const Tensor wq = random_tensor({c.hd}, DType::bf16, rng, 0.3f, 1.f), wk = random_tensor({c.hd}, DType::bf16, rng, 0.3f, 1.f);
    const Tensor wq_d = wq.to(Device::cuda), wk_d = wk.to(Device::cuda), pos_d = pos.to(Device::cuda);
    const Tensor inv_d = inv.to(Device::cuda), slots_d = slots.to(Device::cuda);
    const auto q_of = [&](const Tensor& x) { return x.narrow(1, 0, c.hq); };
    const auto k_of = [&](const Tensor& x) { return x.narrow(1, c.hq, c.hk); };
    const auto v_of = [&](const Tensor& x) { return x.narrow(1, c.hq + c.hk, c.hk); };
    // GPU: fused, and the separate kernels, each on its own copy.
    const Tensor qkv_f = qkv.to(Device::cuda), kc_f = kc.to(Device::cuda), vc_f = vc.to(Device::cuda);
    const Tensor qkv_s = qkv.to(Device::cuda), kc_s = kc.to(Device::cuda), vc_s = vc.to(Device::cuda);
    qk_norm_rope_kv_write(q_of(qkv_f), k_of(qkv_f), v_of(qkv_f), c.norm ? &wq_d : nullptr, c.norm ? &wk_d : nullptr,
                          1e-6f, pos_d, inv_d, f.attention_scaling, slots_d, kc_f, vc_f, stream);
    if (c.norm) {
      rmsnorm(q_of(qkv_s), wq_d, 1e-6f, q_of(qkv_s), stream);
      rmsnorm(k_of(qkv_s), wk_d, 1e-6f, k_of(qkv_s), stream);
    }
    rope(q_of(qkv_s), k_of(qkv_s), pos_d, inv_d, f.attention_scaling, stream);
    kv_cache_write(k_of(qkv_s), v_of(qkv_s), slots_d, kc_s, vc_s, stream);
    stream.synchronize();
    // CPU reference chain, in place on the host copies.
    ops::qk_norm_rope_kv_write(q_of(qkv), k_of(qkv), v_of(qkv), c.norm ? &wq : nullptr, c.norm ? &wk : nullptr, 1e-6f,
                               pos, inv, f.attention_scaling, slots, kc, vc, nullptr);
    const std::string what = std::to_string(c.t) + " tokens, " + std::to_string(c.hq) + "/" + std::to_string(c.hk) +
                             " heads, hd " + std::to_string(c.hd) + (c.norm ? ", norm" : "");
    EXPECT_LT(rel_error(qkv_f, qkv), 4e-3) << what;
    EXPECT_LT(rel_error(kc_f, kc), 4e-3) << what;
    EXPECT_EQ(rel_error(vc_f, vc), 0.0) << what;
    EXPECT_EQ(rel_error(qkv_f, qkv_s), 0.0) << "fused vs separate kernels, " << what;
    EXPECT_EQ(rel_error(kc_f, kc_s), 0.0) << "fused vs separate kernels, " << what;
    EXPECT_EQ(rel_error(vc_f, vc_s), 0.0) << "fused vs separate kernels, " << what;
  }
  const Tensor x = Tensor::empty({1, 4, 128}, DType::bf16, Device::cuda), w = Tensor::empty({128}, DType::bf16, Device::cuda);
  const Tensor p = Tensor::empty({1}, DType::i32, Device::cuda), inv = Tensor::empty({64}, DType::f32, Device::cuda);
  const Tensor cache = Tensor::empty({1, 4, 16, 128}, DType::bf16, Device::cuda);
  EXPECT_THROW(qk_norm_rope_kv_write(x, x, x, &w, nullptr, 1e-6f, p, inv, 1.f, p, cache, cache, stream), Error);
}
