// The layer registry: scheme x kind dispatch, per-role overrides, unknown-scheme errors.
#include <gtest/gtest.h>

#include "engine/error.h"
#include "engine/fused_moe_layer.h"
#include "engine/linear.h"
#include "engine/registry.h"
#include "test_util.h"

namespace mxmoe {
namespace {

using testing::error_of;

TEST(Registry, KnowsBothSchemesForBothKinds) {
  const std::vector<std::string> expected = {"bf16", "mxfp8"};
  EXPECT_EQ(registered_schemes(LayerKind::linear), expected);
  EXPECT_EQ(registered_schemes(LayerKind::fused_moe), expected);
}

TEST(Registry, ReturnsAFreshMethodOfTheScheme) {
  const QuantConfig config;
  for (const std::string scheme : {"bf16", "mxfp8"}) {
    const auto a = make_linear_method(scheme, config, "l");
    const auto b = make_linear_method(scheme, config, "l");
    EXPECT_EQ(a->scheme(), scheme);
    EXPECT_NE(a.get(), b.get());  // per-layer state: never shared
    EXPECT_TRUE(a->backend().empty());
    EXPECT_EQ(make_fused_moe_method(scheme, config, "m")->scheme(), scheme);
  }
}

TEST(Registry, UnknownSchemeNamesItTheLayerAndTheKnownOnes) {
  const QuantConfig config;
  const std::string msg = error_of([&] { make_linear_method("int4", config, "model.layers.2.mlp.down_proj"); });
  EXPECT_NE(msg.find("'int4'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.layers.2.mlp.down_proj"), std::string::npos) << msg;
  EXPECT_NE(msg.find("bf16, mxfp8"), std::string::npos) << msg;
  const std::string moe = error_of([&] { make_fused_moe_method("fp4", config, "model.layers.0.mlp.experts"); });
  EXPECT_NE(moe.find("fused MoE layer model.layers.0.mlp.experts"), std::string::npos) << moe;

  QuantConfig bad;
  bad.scheme = "nf4";
  EXPECT_NE(error_of([&] { bad.scheme_for(LayerRole::linear); }).find("'nf4'"), std::string::npos);
}

TEST(QuantConfig, EmbeddingsRouterAndLmHeadStayBf16ByDefault) {
  QuantConfig config;  // mxfp8
  EXPECT_EQ(config.scheme_for(LayerRole::linear), "mxfp8");
  EXPECT_EQ(config.scheme_for(LayerRole::experts), "mxfp8");
  EXPECT_EQ(config.scheme_for(LayerRole::embedding), "bf16");
  EXPECT_EQ(config.scheme_for(LayerRole::router_gate), "bf16");
  EXPECT_EQ(config.scheme_for(LayerRole::lm_head), "bf16");
  config.quantize_lm_head = true;
  EXPECT_EQ(config.scheme_for(LayerRole::lm_head), "mxfp8");
  EXPECT_EQ(config.scheme_for(LayerRole::router_gate), "bf16");

  QuantConfig bf16;
  bf16.scheme = "bf16";
  bf16.quantize_lm_head = true;
  for (LayerRole role : {LayerRole::linear, LayerRole::experts, LayerRole::lm_head, LayerRole::router_gate})
    EXPECT_EQ(bf16.scheme_for(role), "bf16");
}

TEST(QuantConfig, LayersAskTheRegistryForTheirRole) {
  const QuantConfig config;  // mxfp8
  LinearConfig c{"model.layers.0.mlp.gate", 64, {{"model.layers.0.mlp.gate", 8}}};
  c.device = Device::cpu;
  c.role = LayerRole::router_gate;
  EXPECT_STREQ(LinearLayer(c, config).method().scheme(), "bf16");
  c.role = LayerRole::lm_head;
  EXPECT_STREQ(LinearLayer(c, config).method().scheme(), "bf16");
  c.role = LayerRole::linear;
  EXPECT_STREQ(LinearLayer(c, config).method().scheme(), "mxfp8");

  FusedMoEConfig m{"model.layers.0.mlp.experts", 4, 64, 32, ExpertNames::gate_up_down("model.layers.0.mlp.experts")};
  m.device = Device::cpu;
  EXPECT_STREQ(FusedMoELayer(m, config).method().scheme(), "mxfp8");
}

}  // namespace
}  // namespace mxmoe
