// FusedMoELayer on the CPU backend: checkpoint names and TP specs, where each expert tensor lands,
// forward against fused_moe_ref on the assembled weights (bf16 and MXFP8), TP shards summing to
// the unsharded layer, and the MXFP8 shape / NaN errors.
#include <gtest/gtest.h>

#include <cstring>

#include "engine/error.h"
#include "engine/fused_moe_layer.h"
#include "engine/linear.h"
#include "layer_test_util.h"
#include "test_util.h"

namespace mxmoe {
namespace {

using testing::Checkpoint;
using testing::fresh_seed;
using testing::load_layer;
using testing::random_tensor;
using testing::rel_error;

using testing::error_of;

constexpr int64_t kE = 6, kH = 64, kI = 192;
const char* kPrefix = "model.layers.1.mlp.experts";

FusedMoEConfig config(int rank = 0, int tp = 1) {
  FusedMoEConfig c{kPrefix, kE, kH, kI, ExpertNames::gate_up_down(kPrefix), {2, true}, rank, tp, Device::cpu};
  return c;
}

using testing::scheme;

Checkpoint random_experts(const FusedMoEConfig& c, std::mt19937_64& rng) {
  Checkpoint ckpt;
  for (int64_t e = 0; e < c.num_experts; ++e) {
    ckpt[c.names.gate_name(e)] = random_tensor({c.intermediate_size, c.hidden_size}, DType::bf16, rng, 0.1f);
    ckpt[c.names.up_name(e)] = random_tensor({c.intermediate_size, c.hidden_size}, DType::bf16, rng, 0.1f);
    ckpt[c.names.down_name(e)] = random_tensor({c.hidden_size, c.intermediate_size}, DType::bf16, rng, 0.1f);
  }
  return ckpt;
}

// The unsharded bf16 weights, assembled independently of the layer: w13 [E, 2I, H], w2 [E, H, I].
MoeWeights assemble(const FusedMoEConfig& c, const Checkpoint& ckpt) {
  MoeWeights w;
  w.w13 = Tensor::empty({kE, 2 * kI, kH}, DType::bf16, Device::cpu);
  w.w2 = Tensor::empty({kE, kH, kI}, DType::bf16, Device::cpu);
  const size_t half = size_t(kI * kH) * 2;  // bytes of one [I, H] bf16 matrix
  for (int64_t e = 0; e < kE; ++e) {
    auto* w13 = static_cast<char*>(w.w13.data()) + e * 2 * half;
    std::memcpy(w13, ckpt.at(c.names.gate_name(e)).data(), half);
    std::memcpy(w13 + half, ckpt.at(c.names.up_name(e)).data(), half);
    std::memcpy(static_cast<char*>(w.w2.data()) + e * half, ckpt.at(c.names.down_name(e)).data(), half);
  }
  return w;
}

Tensor poisoned(const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::bf16, Device::cpu);
  from_f32_vector(std::vector<float>(size_t(t.numel()), NAN), t);
  return t;
}

TEST(FusedMoELayer, CheckpointNamesAndTensorParallelSpecs) {
  FusedMoELayer layer(config(1, 2), scheme("mxfp8"));
  const auto specs = layer.weight_specs();
  ASSERT_EQ(specs.size(), size_t(3 * kE));
  EXPECT_EQ(specs[3].name, "model.layers.1.mlp.experts.1.gate_proj.weight");
  EXPECT_EQ(specs[4].name, "model.layers.1.mlp.experts.1.up_proj.weight");
  EXPECT_EQ(specs[5].name, "model.layers.1.mlp.experts.1.down_proj.weight");
  EXPECT_EQ(specs[4].shape, (Shape{kI, kH}));
  EXPECT_EQ(specs[4].shard.dim, 0);  // rank 1 of 2: rows [96, 192) of gate and of up
  EXPECT_EQ(specs[4].shard.begin, 96);
  EXPECT_EQ(specs[4].shard.length, 96);
  EXPECT_EQ(specs[5].shape, (Shape{kH, kI}));
  EXPECT_EQ(specs[5].shard.dim, 1);  // w2: columns
  EXPECT_EQ(specs[5].shard.begin, 96);

  const ExpertNames mixtral = ExpertNames::mixtral("model.layers.0.block_sparse_moe.experts");
  EXPECT_EQ(mixtral.gate_name(7), "model.layers.0.block_sparse_moe.experts.7.w1.weight");
  EXPECT_EQ(mixtral.up_name(7), "model.layers.0.block_sparse_moe.experts.7.w3.weight");
  EXPECT_EQ(mixtral.down_name(7), "model.layers.0.block_sparse_moe.experts.7.w2.weight");

  FusedMoELayer whole(config(), scheme("bf16"));
  EXPECT_EQ(whole.weight_specs()[0].shard.dim, -1);
  whole.begin_loading();
  EXPECT_EQ(whole.w13.shape(), (Shape{kE, 2 * kI, kH}));
  EXPECT_EQ(whole.weight_dest(3 * 2 + 1).data(), whole.w13.select(2).slice(kI, 2 * kI).data());  // up rows
  EXPECT_EQ(whole.weight_dest(3 * 2 + 2).data(), whole.w2.select(2).data());
}

TEST(FusedMoELayer, CpuBackendMatchesReference) {
  std::mt19937_64 rng(fresh_seed());
  const FusedMoEConfig c = config();
  const Checkpoint ckpt = random_experts(c, rng);
  const MoeWeights full = assemble(c, ckpt);
  std::vector<float> all_mx, all_ref;  // every token count's rows: the MXFP8 error bound below
  for (const int64_t tokens : {1, 7, 33}) {
    SCOPED_TRACE(::testing::Message() << "T " << tokens);
    const Tensor x = random_tensor({tokens, kH}, DType::bf16, rng);
    const Tensor logits = random_tensor({tokens, kE}, DType::f32, rng);
    const Tensor ref = Tensor::empty({tokens, kH}, DType::bf16, Device::cpu);
    fused_moe_ref(x, logits, full, c.routing, ref);

    FusedMoELayer bf16(c, scheme("bf16"));
    load_layer(bf16, ckpt);
    EXPECT_EQ(bf16.backend(), "reference");
    const Tensor out = poisoned({tokens, kH});
    bf16.forward(x, logits, out);
    EXPECT_EQ(rel_error(out, ref), 0.0);

    FusedMoELayer mx(c, scheme("mxfp8"));
    load_layer(mx, ckpt);
    EXPECT_FALSE(mx.w13.defined());  // bf16 copies freed
    MoeWeights q;  // the same weights quantized here, one expert stack at a time
    q.w13_mx = mxfp8_empty(full.w13.shape(), Device::cpu);
    q.w2_mx = mxfp8_empty(full.w2.shape(), Device::cpu);
    ASSERT_EQ(mxfp8_quantize_ref(full.w13, q.w13_mx, ScaleRule::rceil), 0);
    ASSERT_EQ(mxfp8_quantize_ref(full.w2, q.w2_mx, ScaleRule::rceil), 0);
    const Tensor qref = Tensor::empty({tokens, kH}, DType::bf16, Device::cpu);
    fused_moe_ref(x, logits, q, c.routing, qref);
    const Tensor mx_out = poisoned({tokens, kH});
    mx.forward(x, logits, mx_out);
    EXPECT_EQ(rel_error(mx_out, qref), 0.0);
    for (const auto& [all, t] : {std::pair{&all_mx, mx_out}, std::pair{&all_ref, ref}}) {
      const std::vector<float> v = to_f32_vector(t);
      all->insert(all->end(), v.begin(), v.end());
    }
  }
  // MXFP8 error of two chained GEMMs, over all 41 token rows: one token's 64 outputs alone are too
  // few for a stable statistic (it exceeded the bound for 7 of 100 fresh seeds).
  const Shape n = {int64_t(all_ref.size())};
  EXPECT_LT(rel_error(Tensor::wrap(all_mx.data(), n, DType::f32, Device::cpu),
                      Tensor::wrap(all_ref.data(), n, DType::f32, Device::cpu)),
            0.06);
}

// forward with the router layer on the CPU is the router's forward, then the experts': bit-equal.
TEST(FusedMoELayer, ForwardWithRouterIsRouterThenExperts) {
  std::mt19937_64 rng(fresh_seed());
  const FusedMoEConfig c = config();
  Checkpoint ckpt = random_experts(c, rng);
  const std::string gate = "model.layers.1.mlp.gate";
  ckpt[gate + ".weight"] = random_tensor({kE, kH}, DType::bf16, rng, 0.1f);
  LinearLayer router({gate, kH, {{gate, kE}}, false, LinearParallel::replicated, LayerRole::router_gate, 0, 1, Device::cpu},
                     scheme("mxfp8"));
  FusedMoELayer layer(c, scheme("mxfp8"));
  load_layer(router, ckpt);
  load_layer(layer, ckpt);
  const Tensor x = random_tensor({5, kH}, DType::bf16, rng);
  const Tensor logits = Tensor::empty({5, kE}, DType::f32, Device::cpu), out = poisoned({5, kH});
  layer.forward(x, router, logits, out);
  const Tensor want_logits = Tensor::empty({5, kE}, DType::f32, Device::cpu), want = poisoned({5, kH});
  router.forward(x, want_logits);
  layer.forward(x, want_logits, want);
  EXPECT_TRUE(testing::same_bytes(logits, want_logits));
  EXPECT_TRUE(testing::same_bytes(out, want));
}

TEST(FusedMoELayer, TensorParallelShardsSumToTheFullLayer) {
  std::mt19937_64 rng(fresh_seed());
  const Checkpoint ckpt = random_experts(config(), rng);
  const Tensor x = random_tensor({9, kH}, DType::bf16, rng);
  const Tensor logits = random_tensor({9, kE}, DType::f32, rng);
  const Tensor ref = Tensor::empty({9, kH}, DType::bf16, Device::cpu);
  fused_moe_ref(x, logits, assemble(config(), ckpt), config().routing, ref);
  for (const int tp : {2, 3}) {
    std::vector<float> sum(size_t(9 * kH), 0.f);
    for (int rank = 0; rank < tp; ++rank) {
      FusedMoELayer layer(config(rank, tp), scheme("bf16"));
      load_layer(layer, ckpt);
      const Tensor out = poisoned({9, kH});
      layer.forward(x, logits, out);
      const std::vector<float> part = to_f32_vector(out);
      for (size_t i = 0; i < sum.size(); ++i) sum[i] += part[i];
    }
    Tensor summed = Tensor::empty({9, kH}, DType::f32, Device::cpu);
    from_f32_vector(sum, summed);
    EXPECT_LT(rel_error(summed, ref), 1e-2) << "tp " << tp;  // bf16 rounding of each partial sum
  }
}

TEST(FusedMoELayer, ClearErrors) {
  FusedMoEConfig c = config();
  c.hidden_size = 80;
  std::string msg = error_of([&] { FusedMoELayer(c, scheme("mxfp8")); });
  EXPECT_NE(msg.find("model.layers.1.mlp.experts: mxfp8 experts need"), std::string::npos) << msg;
  EXPECT_NE(msg.find("H = 80, I = 192"), std::string::npos) << msg;

  msg = error_of([&] { FusedMoELayer(config(0, 4), scheme("mxfp8")); });  // I = 48 per rank
  EXPECT_NE(msg.find("I = 48 (tensor parallel 4)"), std::string::npos) << msg;
  msg = error_of([&] { FusedMoELayer(config(0, 5), scheme("bf16")); });
  EXPECT_NE(msg.find("intermediate size 192 not divisible by tensor parallel size 5"), std::string::npos) << msg;

  std::mt19937_64 rng(fresh_seed());
  Checkpoint ckpt = random_experts(config(), rng);
  ckpt[config().names.up_name(4)].data_as<uint16_t>()[5] = 0x7f80;  // bf16 +Inf
  FusedMoELayer layer(config(), scheme("mxfp8"));
  msg = error_of([&] { load_layer(layer, ckpt); });
  EXPECT_NE(msg.find("model.layers.1.mlp.experts.4.up_proj.weight holds NaN/Inf"), std::string::npos) << msg;

  FusedMoELayer ok(config(), scheme("bf16"));
  const Tensor x = random_tensor({2, kH}, DType::bf16, rng), out = poisoned({2, kH});
  const Tensor logits = random_tensor({2, kE}, DType::bf16, rng);
  EXPECT_NE(error_of([&] { ok.forward(x, logits, out); }).find("before its weights were loaded"), std::string::npos);
  load_layer(ok, random_experts(config(), rng));
  msg = error_of([&] { ok.forward(x, logits, out); });
  EXPECT_NE(msg.find("router logits must be [2, 6] f32"), std::string::npos) << msg;
}

}  // namespace
}  // namespace mxmoe
