// FusedMoELayer on the GPU against the same layer on the CPU (the reference backend), loaded from
// the same random checkpoint: checks the layer glue (batched MXFP8 quantization of all experts on
// the GPU, which is bit-exact with the CPU's, and the fused_moe CUDA path) on fresh random inputs.
// Threshold 2e-2 relative: the GPU prefill path rounds gate/up and the expert outputs to bf16
// (kernels/fused_moe.h); bf16 output rounding alone is ~2e-3.
#include <gtest/gtest.h>

#include "engine/cuda_check.h"
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

TEST(FusedMoELayerGpu, MatchesTheCpuLayer) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  const int64_t e = 16, h = 256, inter = 128;
  const char* prefix = "model.layers.0.block_sparse_moe.experts";
  FusedMoEConfig c{prefix, e, h, inter, ExpertNames::mixtral(prefix), {4, true}};
  Checkpoint ckpt;
  for (int64_t i = 0; i < e; ++i) {
    ckpt[c.names.gate_name(i)] = random_tensor({inter, h}, DType::bf16, rng, 0.08f);
    ckpt[c.names.up_name(i)] = random_tensor({inter, h}, DType::bf16, rng, 0.08f);
    ckpt[c.names.down_name(i)] = random_tensor({h, inter}, DType::bf16, rng, 0.08f);
  }
  for (const char* scheme : {"mxfp8", "bf16"}) {
    QuantConfig q;
    q.scheme = scheme;
    FusedMoEConfig cpu_config = c;
    cpu_config.device = Device::cpu;
    FusedMoELayer gpu(c, q), cpu(cpu_config, q);
    load_layer(gpu, ckpt);
    load_layer(cpu, ckpt);
    EXPECT_EQ(gpu.backend(), "fused-moe-cuda");
    for (const int64_t tokens : {1, 7, 64, 300}) {
      const Tensor x = random_tensor({tokens, h}, DType::bf16, rng);
      const Tensor logits = random_tensor({tokens, e}, DType::f32, rng);
      const Tensor ref = Tensor::empty({tokens, h}, DType::bf16, Device::cpu);
      cpu.forward(x, logits, ref);
      const Tensor out = Tensor::empty({tokens, h}, DType::bf16, Device::cuda);
      CUDA_CHECK(cudaMemset(out.data(), 0xff, out.nbytes()));  // NaN poison
      gpu.forward(x.to(Device::cuda), logits.to(Device::cuda), out);
      CUDA_CHECK(cudaDeviceSynchronize());
      const double err = rel_error(out, ref);
      EXPECT_LT(err, 2e-2) << scheme << " T " << tokens;
      std::printf("fused MoE layer %s T=%lld rel_err=%.2e\n", scheme, (long long)tokens, err);
    }
  }
}

// forward with the router layer: at T = 1 the router's GEMV runs inside the routing launch, beyond
// it the router GEMM then the experts (T = 7, 16, 64); either way the logits match the CPU
// router's (rel <= 1e-5) and the output the CPU layer's on its own router.
TEST(FusedMoELayerGpu, ForwardWithRouter) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  const int64_t e = 16, h = 256, inter = 128;
  const std::string block = "model.layers.0.mlp";
  FusedMoEConfig c{block + ".experts", e, h, inter, ExpertNames::gate_up_down(block + ".experts"), {4, true}};
  LinearConfig rc{block + ".gate", h, {{block + ".gate", e}}, false, LinearParallel::replicated, LayerRole::router_gate};
  Checkpoint ckpt;
  ckpt[block + ".gate.weight"] = random_tensor({e, h}, DType::bf16, rng, 0.1f);
  for (int64_t i = 0; i < e; ++i) {
    ckpt[c.names.gate_name(i)] = random_tensor({inter, h}, DType::bf16, rng, 0.08f);
    ckpt[c.names.up_name(i)] = random_tensor({inter, h}, DType::bf16, rng, 0.08f);
    ckpt[c.names.down_name(i)] = random_tensor({h, inter}, DType::bf16, rng, 0.08f);
  }
  const QuantConfig q = testing::scheme("mxfp8");
  FusedMoEConfig cpu_config = c;
  cpu_config.device = Device::cpu;
  LinearConfig cpu_rc = rc;
  cpu_rc.device = Device::cpu;
  FusedMoELayer gpu(c, q), cpu(cpu_config, q);
  LinearLayer gpu_router(rc, q), cpu_router(cpu_rc, q);
  for (Loadable* l : std::initializer_list<Loadable*>{&gpu, &cpu, &gpu_router, &cpu_router}) load_layer(*l, ckpt);
  for (const int64_t tokens : {1, 7, 16, 64}) {
    SCOPED_TRACE(cat("T=", tokens));
    const Tensor x = random_tensor({tokens, h}, DType::bf16, rng);
    const Tensor ref = Tensor::empty({tokens, h}, DType::bf16, Device::cpu);
    const Tensor ref_logits = Tensor::empty({tokens, e}, DType::f32, Device::cpu);
    cpu.forward(x, cpu_router, ref_logits, ref);
    const Tensor out = Tensor::empty({tokens, h}, DType::bf16, Device::cuda);
    const Tensor logits = Tensor::empty({tokens, e}, DType::f32, Device::cuda);
    CUDA_CHECK(cudaMemset(out.data(), 0xff, out.nbytes()));  // NaN poison
    CUDA_CHECK(cudaMemset(logits.data(), 0xff, logits.nbytes()));
    gpu.forward(x.to(Device::cuda), gpu_router, logits, out);
    CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_LT(rel_error(logits, ref_logits), 1e-5);
    EXPECT_LT(rel_error(out, ref), 2e-2);
  }
}

}  // namespace
}  // namespace mxmoe
