// fused_moe on the GPU against the CPU reference (fused_moe_ref) on fresh random inputs:
// token counts 1, 7, 64, 4096; E=8 k=2, E=128 k=8, E=60 k=4; MXFP8 and bf16 weights; both the
// decode and the prefill path; uneven loads (idle experts, one expert taking every token);
// TP shards of 2 and 4 summing to the unsharded output; a CUDA-graph replay.
// Threshold: rel error <= 1e-2 (bf16 level: the GPU paths round act, and on the prefill path also
// gate/up and the expert outputs, to bf16; the reference rounds act and out only).
#include <cuda_runtime.h>

#include "engine/cuda_check.h"
#include "engine/error.h"
#include "engine/stream.h"
#include "kernels/matmul_ref.h"
#include "kernels/moe_decode.h"
#include "tests/moe_test_util.h"

namespace mxmoe {
namespace {

using testing::Load;

constexpr double kTol = 1e-2;
constexpr int64_t kHidden = 256, kInter = 128;

struct Config {
  int64_t experts;
  int top_k;
  bool renormalize;
  bool mxfp8;
};

std::string config_name(const ::testing::TestParamInfo<Config>& info) {
  const Config& c = info.param;
  return cat("E", c.experts, "_k", c.top_k, c.renormalize ? "_renorm" : "", c.mxfp8 ? "_mxfp8" : "_bf16");
}

struct Problem {
  Tensor x, logits, ref;  // CPU: [T, H] bf16, [T, E] f32, [T, H] bf16
};

Problem make_problem(int64_t tokens, const Config& c, const MoeWeights& w, Load load, std::mt19937_64& rng) {
  Problem p{testing::random_tensor({tokens, kHidden}, DType::bf16, rng),
            testing::moe_logits(tokens, c.experts, c.top_k, load, rng),
            Tensor::empty({tokens, kHidden}, DType::bf16, Device::cpu)};
  fused_moe_ref(p.x, p.logits, w, {c.top_k, c.renormalize}, p.ref);
  return p;
}

// GPU output of one call (out poisoned with NaN first).
Tensor run_gpu(const Problem& p, const MoeWeights& dw, const MoeRouting& r, MoePath path, MoeWorkspace& ws) {
  Tensor out = Tensor::empty({p.x.size(0), kHidden}, DType::bf16, Device::cuda);
  CUDA_CHECK(cudaMemset(out.data(), 0xff, out.nbytes()));
  fused_moe(p.x.to(Device::cuda), p.logits.to(Device::cuda), dw, r, out, ws, nullptr, path);
  return out.to(Device::cpu);
}

// Each test: a GPU (else skipped), a fresh seed, random expert weights of the parameter's
// config on the CPU (w) and the GPU (dw), and its routing.
class FusedMoeGpu : public ::testing::TestWithParam<Config> {
 protected:
  void SetUp() override {
    MXMOE_REQUIRE_GPU();
    c = GetParam();
    w = testing::random_moe_weights(c.experts, kHidden, kInter, c.mxfp8, rng);
    dw = testing::moe_weights_to(w, Device::cuda);
    r = MoeRouting{c.top_k, c.renormalize};
  }

  Config c{};
  std::mt19937_64 rng{testing::fresh_seed()};
  MoeWeights w, dw;
  MoeRouting r{};
};

TEST_P(FusedMoeGpu, MatchesReference) {
  MoeWorkspace ws;
  for (int64_t tokens : {1, 7, 64, 4096})
    for (Load load : {Load::random, Load::half_idle, Load::one_takes_all}) {
      if (tokens == 4096 && load != Load::random) continue;  // the reference is slow at that size
      const Problem p = make_problem(tokens, c, w, load, rng);
      for (MoePath path : {MoePath::automatic, MoePath::decode, MoePath::prefill}) {
        if (tokens == 4096 && path == MoePath::decode) continue;  // decode kernels are for few tokens
        SCOPED_TRACE(cat("T=", tokens, " load=", load, " path=", int(path)));
        const double err = testing::rel_error(run_gpu(p, dw, r, path, ws), p.ref);
        RecordProperty(cat("err_T", tokens, "_", int(load), "_path", int(path)), std::to_string(err));
        EXPECT_LT(err, kTol);
      }
    }
}

// Each rank holds I/ranks of the intermediate dimension; the sum of the rank outputs (what the
// caller's all-reduce computes) equals the unsharded reference.
TEST_P(FusedMoeGpu, TensorParallelShardsSum) {
  MoeWorkspace ws;
  for (int64_t tokens : {7, 64}) {
    const Problem p = make_problem(tokens, c, w, Load::random, rng);
    for (int ranks : {2, 4})
      for (MoePath path : {MoePath::decode, MoePath::prefill}) {
        SCOPED_TRACE(cat("T=", tokens, " ranks=", ranks, " path=", int(path)));
        std::vector<Tensor> parts;
        for (int rank = 0; rank < ranks; ++rank)
          parts.push_back(
              run_gpu(p, testing::moe_weights_to(testing::shard_moe_weights(w, rank, ranks), Device::cuda), r, path, ws));
        EXPECT_LT(testing::rel_error(testing::sum_f32(parts), p.ref), kTol);
      }
  }
}

// The whole call captured in a CUDA graph (no host sync inside, or capture fails) and replayed.
TEST_P(FusedMoeGpu, CudaGraphReplay) {
  for (int64_t tokens : {7, 64}) {
    SCOPED_TRACE(cat("T=", tokens));
    const Problem p = make_problem(tokens, c, w, Load::random, rng);
    const Tensor x = p.x.to(Device::cuda), logits = p.logits.to(Device::cuda);
    Tensor out = Tensor::empty({tokens, kHidden}, DType::bf16, Device::cuda);
    MoeWorkspace ws;
    Stream stream;
    fused_moe(x, logits, dw, r, out, ws, stream);  // grows the workspace
    stream.synchronize();
    cudaGraph_t graph;
    CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    fused_moe(x, logits, dw, r, out, ws, stream);
    CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    cudaGraphExec_t exec;
    CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    CUDA_CHECK(cudaMemsetAsync(out.data(), 0xff, out.nbytes(), stream));  // same stream: ordered
    CUDA_CHECK(cudaGraphLaunch(exec, stream));
    stream.synchronize();
    EXPECT_LT(testing::rel_error(out, p.ref), kTol);
    CUDA_CHECK(cudaGraphExecDestroy(exec));
    CUDA_CHECK(cudaGraphDestroy(graph));
  }
}

// Decode calls back to back on one stream with no host sync, each call's input the previous
// call's output: the expert kernels start early (programmatic dependent launch) and must still read
// finished routing, activations and inputs. Each call is checked against the reference on the
// GPU's own input.
TEST_P(FusedMoeGpu, ChainedDecodeCalls) {
  constexpr int kCalls = 4;
  for (int64_t tokens : {1, 16}) {
    SCOPED_TRACE(cat("T=", tokens));
    std::vector<Tensor> x{testing::random_tensor({tokens, kHidden}, DType::bf16, rng).to(Device::cuda)}, logits;
    for (int i = 0; i < kCalls; ++i) {
      logits.push_back(testing::moe_logits(tokens, c.experts, c.top_k, Load::random, rng));
      x.push_back(Tensor::empty({tokens, kHidden}, DType::bf16, Device::cuda));
      CUDA_CHECK(cudaMemset(x.back().data(), 0xff, x.back().nbytes()));
    }
    std::vector<Tensor> logits_gpu;
    for (const Tensor& l : logits) logits_gpu.push_back(l.to(Device::cuda));
    // One logits buffer refilled before each call, as a model's router output is.
    Tensor router_out = Tensor::empty({tokens, c.experts}, DType::f32, Device::cuda);
    MoeWorkspace ws;
    Stream stream;
    for (int i = 0; i < kCalls; ++i) {
      router_out.copy_from(logits_gpu[size_t(i)], stream);
      fused_moe(x[size_t(i)], router_out, dw, r, x[size_t(i) + 1], ws, stream, MoePath::decode);
    }
    stream.synchronize();
    for (int i = 0; i < kCalls; ++i) {
      Tensor ref = Tensor::empty({tokens, kHidden}, DType::bf16, Device::cpu);
      fused_moe_ref(x[size_t(i)].to(Device::cpu), logits[size_t(i)], w, r, ref);
      EXPECT_LT(testing::rel_error(x[size_t(i) + 1], ref), kTol) << "call " << i;
    }
  }
}

// fused_moe_with_router: the router's logits GEMV inside the routing launch. Calls chained on one
// stream (each call's input the previous call's output, as layers are; programmatic launch must
// still read finished inputs), then the same chain captured in a CUDA graph and replayed twice (the
// kernel's block count resets itself). Each call: the logits it wrote against a double CPU dot
// product (rel <= 1e-5), and its output against fused_moe_ref on its own input and those logits.
TEST_P(FusedMoeGpu, WithRouterChainedAndReplayed) {
  const Tensor router = testing::random_tensor({c.experts, kHidden}, DType::bf16, rng, 0.1f);
  const Tensor d_router = router.to(Device::cuda);
  const std::vector<float> rv = to_f32_vector(router);
  constexpr int kCalls = 3;
  for (int64_t tokens : {1, 7, 16}) {
    SCOPED_TRACE(cat("T=", tokens));
    std::vector<Tensor> x{testing::random_tensor({tokens, kHidden}, DType::bf16, rng).to(Device::cuda)}, logits;
    for (int i = 0; i < kCalls; ++i) {
      x.push_back(Tensor::empty({tokens, kHidden}, DType::bf16, Device::cuda));
      logits.push_back(Tensor::empty({tokens, c.experts}, DType::f32, Device::cuda));
    }
    MoeWorkspace ws;
    Stream stream;
    ASSERT_TRUE(fused_moe_router_fusable(x[0], d_router, r));
    const auto chain = [&] {
      for (int i = 0; i < kCalls; ++i)
        fused_moe_with_router(x[size_t(i)], d_router, logits[size_t(i)], dw, r, x[size_t(i) + 1], ws, stream);
    };
    const auto poison = [&] {
      for (int i = 0; i < kCalls; ++i) {
        CUDA_CHECK(cudaMemsetAsync(x[size_t(i) + 1].data(), 0xff, x[size_t(i) + 1].nbytes(), stream));
        CUDA_CHECK(cudaMemsetAsync(logits[size_t(i)].data(), 0xff, logits[size_t(i)].nbytes(), stream));
      }
    };
    const auto check = [&](const char* what) {
      stream.synchronize();
      for (int i = 0; i < kCalls; ++i) {
        const Tensor xi = x[size_t(i)].to(Device::cpu), li = logits[size_t(i)].to(Device::cpu);
        const std::vector<float> xv = to_f32_vector(xi);
        std::vector<float> want(size_t(tokens * c.experts));
        for (int64_t t = 0; t < tokens; ++t)
          for (int64_t e = 0; e < c.experts; ++e) {
            double acc = 0;
            for (int64_t j = 0; j < kHidden; ++j) acc += double(xv[size_t(t * kHidden + j)]) * rv[size_t(e * kHidden + j)];
            want[size_t(t * c.experts + e)] = float(acc);
          }
        Tensor want_l = Tensor::empty({tokens, c.experts}, DType::f32, Device::cpu);
        from_f32_vector(want, want_l);
        EXPECT_LT(testing::rel_error(li, want_l), 1e-5) << what << " call " << i;
        Tensor ref = Tensor::empty({tokens, kHidden}, DType::bf16, Device::cpu);
        fused_moe_ref(xi, li, w, r, ref);
        EXPECT_LT(testing::rel_error(x[size_t(i) + 1], ref), kTol) << what << " call " << i;
      }
    };
    poison();
    chain();  // also grows the workspace before the capture
    check("eager");
    cudaGraph_t graph;
    CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    chain();
    CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    cudaGraphExec_t exec;
    CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    for (int replay = 0; replay < 2; ++replay) {
      poison();
      CUDA_CHECK(cudaGraphLaunch(exec, stream));
      check(replay ? "replay 2" : "replay 1");
    }
    CUDA_CHECK(cudaGraphExecDestroy(exec));
    CUDA_CHECK(cudaGraphDestroy(graph));
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, FusedMoeGpu,
                         ::testing::Values(Config{8, 2, true, true}, Config{8, 2, true, false},
                                           Config{128, 8, true, true}, Config{128, 8, true, false},
                                           Config{60, 4, false, true}, Config{60, 4, false, false}),
                         config_name);

// A realistic-width shard (Qwen3-30B-A3B hidden size, I = 768 / 4) on both paths, MXFP8.
TEST(FusedMoeGpuWide, QwenShapeShard) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(testing::fresh_seed());
  const int64_t hidden = 2048, inter = 192, experts = 128;
  const int k = 8;
  for (bool mx : {true, false}) {
    const MoeWeights w = testing::random_moe_weights(experts, hidden, inter, mx, rng);
    const MoeWeights dw = testing::moe_weights_to(w, Device::cuda);
    MoeWorkspace ws;
    for (int64_t tokens : {1, 8, 100}) {
      SCOPED_TRACE(cat("mxfp8=", mx, " T=", tokens));
      const Tensor x = testing::random_tensor({tokens, hidden}, DType::bf16, rng);
      const Tensor logits = testing::moe_logits(tokens, experts, k, Load::random, rng);
      Tensor ref = Tensor::empty({tokens, hidden}, DType::bf16, Device::cpu);
      fused_moe_ref(x, logits, w, {k, true}, ref);
      for (MoePath path : {MoePath::decode, MoePath::prefill}) {
        Tensor out = Tensor::empty({tokens, hidden}, DType::bf16, Device::cuda);
        CUDA_CHECK(cudaMemset(out.data(), 0xff, out.nbytes()));
        fused_moe(x.to(Device::cuda), logits.to(Device::cuda), dw, {k, true}, out, ws, nullptr, path);
        EXPECT_LT(testing::rel_error(out, ref), kTol) << "path " << int(path);
      }
    }
  }
}

TEST(FusedMoeGpuArgs, CpuTensorsRunTheReference) {
  std::mt19937_64 rng(testing::fresh_seed());
  const MoeWeights w = testing::random_moe_weights(8, 64, 32, true, rng);
  const Tensor x = testing::random_tensor({3, 64}, DType::bf16, rng);
  const Tensor logits = testing::moe_logits(3, 8, 2, Load::random, rng);
  Tensor a = Tensor::empty({3, 64}, DType::bf16, Device::cpu), b = Tensor::empty({3, 64}, DType::bf16, Device::cpu);
  MoeWorkspace ws;
  fused_moe(x, logits, w, {2, true}, a, ws, nullptr);
  fused_moe_ref(x, logits, w, {2, true}, b);
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.nbytes()));
}

TEST(FusedMoeGpuArgs, MixedDevicesThrow) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(testing::fresh_seed());
  const MoeWeights w = testing::random_moe_weights(8, 64, 32, true, rng);  // CPU weights
  const Tensor x = testing::random_tensor({3, 64}, DType::bf16, rng).to(Device::cuda);
  const Tensor logits = testing::moe_logits(3, 8, 2, Load::random, rng).to(Device::cuda);
  Tensor out = Tensor::empty({3, 64}, DType::bf16, Device::cuda);
  MoeWorkspace ws;
  EXPECT_THROW(fused_moe(x, logits, w, {2, true}, out, ws, nullptr), Error);
}

}  // namespace
}  // namespace mxmoe
