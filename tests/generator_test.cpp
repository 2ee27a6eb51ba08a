// The generation loop on the CPU backend: stop ids, the caller stopping a sequence, max tokens,
// seeded sampling, and a batch of prompts finishing at different steps.
#include <gtest/gtest.h>

#include "model_golden.h"

using namespace mxmoe;
using namespace mxmoe::testing;

namespace {

std::vector<int32_t> prompt(const GoldenModel& g, int i) { return g.goldens["prompts"][i]["ids"].get<std::vector<int32_t>>(); }

}  // namespace

TEST(Generator, StopsAtStopIdsCallerAndLength) {
  GoldenModel g = load_golden("qwen3", "bf16", Device::cpu);
  GenerationOptions greedy;
  greedy.sampling.temperature = 0.f;
  greedy.max_new_tokens = 6;
  const int64_t chained = g.generator->stats().chained_steps;
  const std::vector<int32_t> full = g.generator->generate({prompt(g, 1)}, greedy)[0].tokens;
  ASSERT_EQ(full.size(), 6u);
  // Tokens 3..6 come from decode steps launched before the previous token was read back (token 1
  // from the prefill, token 2 from the first decode step, which waits for the prefill's token).
  EXPECT_EQ(g.generator->stats().chained_steps - chained, 4);

  GenerationOptions with_stop = greedy;
  with_stop.stop_ids = {full[2]};
  const Generation stopped = g.generator->generate({prompt(g, 1)}, with_stop)[0];
  EXPECT_EQ(stopped.finish, Generation::Finish::stop_id);
  EXPECT_EQ(stopped.tokens, std::vector<int32_t>(full.begin(), full.begin() + 3));

  int seen = 0;
  const Generation cut = g.generator->generate({prompt(g, 1)}, greedy, [&](size_t, int32_t) { return ++seen < 4; })[0];
  EXPECT_EQ(cut.finish, Generation::Finish::caller);
  EXPECT_EQ(cut.tokens, std::vector<int32_t>(full.begin(), full.begin() + 4));
  EXPECT_EQ(g.cache->free_blocks(), g.cache->num_blocks());
}

// The repetition penalty reads each sequence's history, so its steps wait for every token.
TEST(Generator, RepetitionPenaltyStepsAreNotChained) {
  GoldenModel g = load_golden("qwen3", "bf16", Device::cpu);
  GenerationOptions options;
  options.sampling.temperature = 0.f;
  options.sampling.repetition_penalty = 1.3f;
  options.max_new_tokens = 5;
  const int64_t chained = g.generator->stats().chained_steps;
  const std::vector<int32_t> tokens = g.generator->generate({prompt(g, 0)}, options)[0].tokens;
  EXPECT_EQ(tokens.size(), 5u);
  EXPECT_EQ(g.generator->stats().chained_steps, chained);
}

TEST(Generator, SeededSamplingIsReproducibleAndBatchIndependent) {
  GoldenModel g = load_golden("qwen3_moe", "bf16", Device::cpu);
  GenerationOptions options;
  options.sampling.temperature = 1.f;
  options.sampling.seed = 7;
  options.max_new_tokens = 8;
  const auto a = g.generator->generate({prompt(g, 0)}, options)[0].tokens;
  EXPECT_EQ(g.generator->generate({prompt(g, 0)}, options)[0].tokens, a);
  // In a batch with another prompt the same seed gives the same tokens (draws are keyed by seed and step).
  const auto batch = g.generator->generate({prompt(g, 1), prompt(g, 0)}, options);
  EXPECT_EQ(batch[1].tokens, a);
  options.sampling.seed = 8;
  EXPECT_NE(g.generator->generate({prompt(g, 0)}, options)[0].tokens, a);
}

TEST(Generator, ChunkedPrefillGivesTheSameTokens) {
  GoldenModel g = load_golden("mixtral", "bf16", Device::cpu);
  GenerationOptions options;
  options.sampling.temperature = 0.f;
  options.max_new_tokens = 5;
  const auto whole = g.generator->generate({prompt(g, 1), prompt(g, 0)}, options);
  options.max_step_tokens = 6;  // prompts of 12 and 7 tokens: 3 shares of 3 per step, several chunks each
  const auto chunked = g.generator->generate({prompt(g, 1), prompt(g, 0)}, options);
  for (size_t i = 0; i < 2; ++i) EXPECT_EQ(chunked[i].tokens, whole[i].tokens) << "prompt " << i;
  EXPECT_EQ(g.cache->free_blocks(), g.cache->num_blocks());
}

// Decode steps are chained (the next launched before this one's tokens are read): a sequence that
// stops mid-batch has a token drawn past its end, which must be dropped without touching the others.
TEST(Generator, SequencesStoppingMidBatchLeaveTheOthersUnchanged) {
  GoldenModel g = load_golden("qwen3_moe", "bf16", Device::cpu);
  GenerationOptions greedy;
  greedy.sampling.temperature = 0.f;
  greedy.max_new_tokens = 7;
  const std::vector<int32_t> p1 = prompt(g, 1);
  const std::vector<std::vector<int32_t>> prompts = {prompt(g, 0), p1, std::vector<int32_t>(p1.begin(), p1.begin() + 9)};
  const std::vector<Generation> full = g.generator->generate(prompts, greedy);
  const auto until = [](const std::vector<int32_t>& tokens, int32_t stop) {  // up to the first stop, included
    auto end = std::find(tokens.begin(), tokens.end(), stop);
    return std::vector<int32_t>(tokens.begin(), end == tokens.end() ? end : end + 1);
  };

  GenerationOptions with_stop = greedy;
  with_stop.stop_ids = {full[1].tokens[2]};  // prompt 1 stops at its third token
  const int64_t before = g.generator->stats().generated_tokens;
  const std::vector<Generation> stopped = g.generator->generate(prompts, with_stop);
  int64_t kept = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(stopped[i].tokens, until(full[i].tokens, with_stop.stop_ids[0])) << "prompt " << i;
    kept += int64_t(stopped[i].tokens.size());
  }
  EXPECT_EQ(stopped[1].finish, Generation::Finish::stop_id);
  EXPECT_EQ(g.generator->stats().generated_tokens - before, kept);  // the dropped tokens are not counted

  // The caller stops prompt 0 after 2 tokens and prompt 2 after 5; prompt 1 runs to the length.
  std::vector<int> seen(prompts.size(), 0);
  const std::vector<int> limit = {2, 100, 5};
  const std::vector<Generation> cut =
      g.generator->generate(prompts, greedy, [&](size_t i, int32_t) { return ++seen[i] < limit[i]; });
  for (size_t i = 0; i < prompts.size(); ++i) {
    const size_t n = std::min<size_t>(size_t(limit[i]), full[i].tokens.size());
    EXPECT_EQ(cut[i].tokens, std::vector<int32_t>(full[i].tokens.begin(), full[i].tokens.begin() + long(n)))
        << "prompt " << i;
    EXPECT_EQ(seen[i], int(n)) << "prompt " << i << ": on_token calls";
  }
  EXPECT_EQ(cut[1].finish, Generation::Finish::length);
  EXPECT_EQ(g.cache->free_blocks(), g.cache->num_blocks());
}
