// Tensor parallelism on the CPU backend with simulated ranks (engine/cpu_communicator.h, one thread
// per rank): every golden model (tests/data/models) at tp = 2 and 4, bf16 and MXFP8, against the
// same model at tp = 1; the divisibility rules; a failing rank.
#include <gtest/gtest.h>

#include <atomic>
#include <tuple>

#include "engine/cpu_communicator.h"
#include "model_golden_tp.h"

using namespace mxmoe;
using namespace mxmoe::testing;

namespace {

TensorParallelOptions cpu_options(const std::string& arch, const std::string& scheme, int tp) {
  return golden_tp_options(arch, scheme, tp, Device::cpu);
}


using Case = std::tuple<std::string, std::string, int>;  // arch, scheme, tp

class TensorParallel : public ::testing::TestWithParam<Case> {};

TEST_P(TensorParallel, LogitsAndGreedyMatchOneRank) {
  const auto& [arch, scheme, tp] = GetParam();
  GoldenModel ref = load_golden(arch, scheme, Device::cpu);
  TensorParallelRuntime rt(cpu_options(arch, scheme, tp));
  ASSERT_EQ(rt.world_size(), tp);
  check_tp_matches_one_rank(rt, ref, arch + " " + scheme + " tp=" + std::to_string(tp));
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (const std::string& arch : kGoldenArchs)
    for (const char* scheme : {"bf16", "mxfp8"})
      for (int tp : {2, 4}) cases.emplace_back(arch, scheme, tp);
  return cases;
}

std::string case_name(const ::testing::TestParamInfo<Case>& c) {
  return std::get<0>(c.param) + "_" + std::get<1>(c.param) + "_tp" + std::to_string(std::get<2>(c.param));
}

INSTANTIATE_TEST_SUITE_P(GoldenModels, TensorParallel, ::testing::ValuesIn(all_cases()), case_name);

// A communicator of size 1 runs every collective (identities) on the whole model: bit-exact.
TEST(TensorParallelRuntime, CommunicatorOfOneRankIsBitExact) {
  for (const std::string arch : {"olmoe", "qwen2_moe"}) {  // the all-gather q/k norm; the shared expert
    GoldenModel ref = load_golden(arch, "mxfp8", Device::cpu);
    TensorParallelOptions o = cpu_options(arch, "mxfp8", 1);
    o.communicator_for_one_rank = true;
    TensorParallelRuntime rt(o);
    ASSERT_NE(rt.rank(0).comm, nullptr);
    const auto ids = ref.goldens["prompts"][1]["ids"].get<std::vector<int32_t>>();
    const Tensor got = tp_prefill_logits(rt, ids)[0], want = prefill_logits(ref, ids);
    EXPECT_EQ(std::memcmp(got.data(), want.data(), want.nbytes()), 0) << arch;
  }
}

// ---- Divisibility rules: clear errors when the model is built, before anything loads.

// The error make_causal_lm gives rank 0 of `tp` for `config` ("" when none).
std::string build_error(const ModelConfig& config, int tp, const std::string& scheme = "bf16") {
  const auto comms = CpuCommunicator::create_group(tp);
  ModelOptions options;
  options.device = Device::cpu;
  options.quant.scheme = scheme;
  options.comm = comms[0].get();
  try {
    make_causal_lm(config, options);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(TensorParallelErrors, QueryHeadsNotDivisible) {
  const ModelConfig c = load_model_config(golden_dir("llama"));  // 4 query heads
  const std::string e = build_error(c, 3);
  EXPECT_NE(e.find("num_attention_heads 4 is not divisible by the tensor parallel size 3"), std::string::npos) << e;
  EXPECT_NE(e.find("config.json"), std::string::npos) << e;
}

TEST(TensorParallelErrors, KvHeadsNeitherSplitNorReplicated) {
  ModelConfig c = load_model_config(golden_dir("llama"));
  c.num_attention_heads = 12;
  c.num_key_value_heads = 3;
  const std::string e = build_error(c, 2);
  EXPECT_NE(e.find("num_key_value_heads 3 and tensor parallel size 2"), std::string::npos) << e;
}

TEST(TensorParallelErrors, VocabNotDivisible) {
  ModelConfig c = load_model_config(golden_dir("qwen2"));
  c.vocab_size = 250;
  const std::string e = build_error(c, 4);
  EXPECT_NE(e.find("vocab_size 250 is not divisible by the tensor parallel size 4"), std::string::npos) << e;
}

TEST(TensorParallelErrors, Mxfp8BlockPerRankNamesTheLayer) {
  // tp = 8 cuts the 128-wide intermediate into 16 per rank: no whole 32-element MXFP8 block.
  ModelConfig dense = load_model_config(golden_dir("llama"));
  dense.num_attention_heads = 8;
  std::string e = build_error(dense, 8, "mxfp8");
  EXPECT_NE(e.find("model.layers.0.mlp.down_proj"), std::string::npos) << e;
  EXPECT_NE(e.find("multiple of 32, got 16"), std::string::npos) << e;
  EXPECT_EQ(build_error(dense, 8, "bf16"), "");  // bf16 has no block constraint

  ModelConfig moe = load_model_config(golden_dir("mixtral"));
  moe.num_attention_heads = 8;
  e = build_error(moe, 8, "mxfp8");
  EXPECT_NE(e.find("model.layers.0.block_sparse_moe.experts"), std::string::npos) << e;
}

// ---- The runtime.

TEST(TensorParallelRuntime, KvCacheHoldsThisRanksHeads) {
  TensorParallelRuntime rt(cpu_options("qwen3", "bf16", 4));  // 2 KV heads over 4 ranks: one each, replicated
  for (int i = 0; i < rt.local_size(); ++i) EXPECT_EQ(rt.rank(i).cache->config().num_kv_heads, 1);
  TensorParallelRuntime rt2(cpu_options("qwen3", "bf16", 2));
  for (int i = 0; i < rt2.local_size(); ++i) EXPECT_EQ(rt2.rank(i).cache->config().num_kv_heads, 1);
}

TEST(TensorParallelRuntime, CallerStopEndsEveryRank) {
  TensorParallelRuntime rt(cpu_options("qwen2_moe", "bf16", 2));
  GenerationOptions greedy;
  greedy.sampling.temperature = 0.f;
  greedy.max_new_tokens = 8;
  int calls = 0;
  const std::vector<Generation> out = rt.generate({{1, 17, 42, 99}}, greedy, [&](size_t, int32_t) {
    return ++calls < 3;  // stop after the third token
  });
  EXPECT_EQ(calls, 3);  // on_token runs once per token, on one rank
  ASSERT_EQ(out[0].tokens.size(), 3u);
  EXPECT_EQ(out[0].finish, Generation::Finish::caller);
  for (int i = 0; i < rt.local_size(); ++i) EXPECT_EQ(rt.rank(i).cache->free_blocks(), 64);
  EXPECT_EQ(rt.generate({{1, 17, 42, 99}}, greedy).size(), 1u);  // and the runtime goes on
}

TEST(TensorParallelRuntime, FailingRankAbortsTheGroupWithItsError) {
  TensorParallelRuntime rt(cpu_options("llama", "bf16", 4));
  std::atomic<int> woken{0};
  const auto fail_rank_two = [&](TensorParallelRuntime::Rank& r) {
    if (r.local == 2) throw Error("rank two could not continue");
    Tensor x = Tensor::empty({4}, DType::f32, Device::cpu);
    try {
      r.comm->all_reduce_sum(x, nullptr);  // waits for rank 2 until the abort wakes it
    } catch (const Error&) {
      ++woken;
      throw;
    }
  };
  try {
    rt.run_on_ranks(fail_rank_two);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank two could not continue"), std::string::npos) << e.what();
  }
  EXPECT_EQ(woken.load(), 3);
  // The group is gone: later calls fail with the same root cause instead of hanging.
  EXPECT_THROW(rt.generate({{1, 2, 3}}, GenerationOptions{}), Error);
}

TEST(TensorParallelRuntime, NeedsAnExplicitKvCacheSize) {
  TensorParallelOptions o = cpu_options("llama", "bf16", 2);
  o.kv_cache.num_blocks = 0;
  EXPECT_THROW(TensorParallelRuntime rt(o), Error);
}

}  // namespace
