// Decode steps replayed from CUDA graphs (engine/decode_graphs.h) on the golden models:
//  - bitwise: greedy generation of a batch of prompts of different lengths, 64 new tokens each,
//    gives the same tokens with graphs as with the same padded steps launched eagerly;
//  - padding: teacher-forced decode steps through graphs (batch of 3 padded to 4) match the
//    unpadded eager steps within bf16 noise, so padding rows never touch a real sequence;
//  - a step's logits held past the next step are an Error there (the step arena's check).
#include <gtest/gtest.h>

#include <algorithm>

#include "model_golden.h"

namespace mxmoe::testing {
namespace {

std::vector<std::vector<int32_t>> random_prompts(const std::vector<size_t>& lengths, int64_t vocab) {
  std::mt19937_64 rng(fresh_seed());
  std::uniform_int_distribution<int32_t> token(0, int32_t(vocab - 1));
  std::vector<std::vector<int32_t>> prompts;
  for (size_t n : lengths) {
    prompts.emplace_back(n);
    for (int32_t& t : prompts.back()) t = token(rng);
  }
  return prompts;
}

std::vector<int32_t> argmax_rows(const Tensor& logits) {
  const std::vector<float> v = to_f32_vector(logits);
  const int64_t vocab = logits.size(1);
  std::vector<int32_t> out;
  for (int64_t r = 0; r < logits.size(0); ++r)
    out.push_back(int32_t(std::max_element(v.begin() + r * vocab, v.begin() + (r + 1) * vocab) - (v.begin() + r * vocab)));
  return out;
}

class DecodeGraphsGpu : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(DecodeGraphsGpu, GraphsEqualEagerTokenForToken) {
  MXMOE_REQUIRE_GPU();
  const auto& [arch, scheme] = GetParam();
  GoldenModel g = load_golden(arch, scheme, Device::cuda);
  GeneratorOptions eager_options;
  eager_options.cuda_graphs = false;
  Generator eager(*g.model, *g.cache, eager_options);
  const auto prompts = random_prompts({5, 23, 61}, g.model->config().vocab_size);
  GenerationOptions options;
  options.sampling.temperature = 0.f;
  options.max_new_tokens = 64;
  const std::vector<Generation> want = eager.generate(prompts, options);
  const std::vector<Generation> got = g.generator->generate(prompts, options);
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_EQ(got[i].tokens.size(), want[i].tokens.size()) << arch << " prompt " << i;
    EXPECT_EQ(got[i].tokens, want[i].tokens) << arch << " " << scheme << " prompt " << i;
  }
  EXPECT_EQ(eager.stats().graph_replays, 0);
  if (g.model->config().rope.type != RopeType::dynamic) {
    // Buckets 4 (3 running), 2 and 1 as prompts finish... all three run to 64 tokens: bucket 4,
    // one eager step, one capture, 61 replays.
    EXPECT_EQ(g.generator->stats().graph_captures, 1) << arch;
    EXPECT_EQ(g.generator->stats().graph_replays, 61) << arch;
  }
  EXPECT_EQ(g.cache->free_blocks(), g.cache->num_blocks());
}

TEST_P(DecodeGraphsGpu, PaddedGraphStepsMatchUnpaddedEagerSteps) {
  MXMOE_REQUIRE_GPU();
  const auto& [arch, scheme] = GetParam();
  GoldenModel g = load_golden(arch, scheme, Device::cuda);
  KvCache plain_cache(g.cache->config(), Device::cuda);
  GeneratorOptions plain_options;
  plain_options.max_graph_batch = 0;  // unpadded eager steps
  Generator plain(*g.model, plain_cache, plain_options);
  const auto prompts = random_prompts({7, 30, 19}, g.model->config().vocab_size);
  std::vector<int> sg, sp;
  std::vector<int32_t> last;
  int32_t end = 0;
  for (const auto& p : prompts) {
    sg.push_back(g.cache->add_sequence());
    sp.push_back(plain_cache.add_sequence());
    end += int32_t(p.size());
    last.push_back(end - 1);
  }
  const Tensor prefill = g.generator->step(sg, prompts, last).to(Device::cpu, g.generator->stream());
  plain.step(sp, prompts, last);
  std::vector<int32_t> next = argmax_rows(prefill);
  for (int step = 0; step < 8; ++step) {
    const std::vector<std::vector<int32_t>> feed = {{next[0]}, {next[1]}, {next[2]}};
    const Tensor got = g.generator->step(sg, feed, {0, 1, 2}).to(Device::cpu, g.generator->stream());
    const Tensor want = plain.step(sp, feed, {0, 1, 2}).to(Device::cpu, plain.stream());
    EXPECT_LT(rel_error(got, want), 1e-2) << arch << " " << scheme << " decode step " << step;
    next = argmax_rows(got);
  }
  // 8 decode steps: the bucket's first (a new token count: eager, outside the arena), a capture
  // that overflows the still empty arena (discarded; the step runs eagerly and the arena grows), a
  // capture, 5 replays. (Inside generate() the sampling's temporaries grow the arena first.)
  if (g.model->config().rope.type != RopeType::dynamic) {
    EXPECT_EQ(g.generator->stats().graph_captures, 1) << arch;
    EXPECT_EQ(g.generator->stats().graph_replays, 5) << arch;
  }
}

INSTANTIATE_TEST_SUITE_P(Models, DecodeGraphsGpu,
                         ::testing::Combine(::testing::ValuesIn(kGoldenArchs), ::testing::Values("mxfp8")));
INSTANTIATE_TEST_SUITE_P(Bf16, DecodeGraphsGpu,
                         ::testing::Combine(::testing::Values("qwen3_moe", "mixtral"), ::testing::Values("bf16")));

TEST(DecodeGraphsGpuArena, LogitsHeldPastTheNextStepAreAnError) {
  MXMOE_REQUIRE_GPU();
  GoldenModel g = load_golden("qwen3_moe", "mxfp8", Device::cuda);
  GeneratorOptions options;
  options.max_graph_batch = 0;  // eager steps: logits come from the step arena
  Generator generator(*g.model, *g.cache, options);
  const int s = g.cache->add_sequence();
  // The first step of each token count runs outside the arena (layers make their workspaces).
  generator.step(std::vector<int>{s}, {{1, 2, 3, 4}}, {3});
  generator.step(std::vector<int>{s}, {{5}}, {0});
  const Tensor kept = generator.step(std::vector<int>{s}, {{6}}, {0});
  const std::string message = error_of([&] { generator.step(std::vector<int>{s}, {{7}}, {0}); });
  EXPECT_NE(message.find("still alive"), std::string::npos) << message;
}

}  // namespace
}  // namespace mxmoe::testing
