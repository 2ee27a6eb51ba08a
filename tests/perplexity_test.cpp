// Perplexity on the CPU backend against the same quantity computed from transformers' logits.
#include <gtest/gtest.h>

#include "engine/perplexity.h"
#include "model_golden.h"

using namespace mxmoe;
using namespace mxmoe::testing;

TEST(Perplexity, MatchesTransformersLogits) {
  GoldenModel g = load_golden("qwen3_moe", "bf16", Device::cpu);
  const auto& p = g.goldens["prompts"][1];
  const auto ids = p["ids"].get<std::vector<int32_t>>();
  const std::vector<float> ref = to_f32_vector(golden_logits(p["logits"]));
  const int64_t vocab = int64_t(ref.size() / ids.size());
  double nll = 0;
  for (size_t i = 0; i + 1 < ids.size(); ++i) {
    const float* row = ref.data() + int64_t(i) * vocab;
    double max = row[0], sum = 0;
    for (int64_t j = 1; j < vocab; ++j) max = std::max(max, double(row[j]));
    for (int64_t j = 0; j < vocab; ++j) sum += std::exp(double(row[j]) - max);
    nll += std::log(sum) + max - double(row[ids[i + 1]]);
  }
  const double want = std::exp(nll / double(ids.size() - 1));

  const PerplexityResult one = perplexity(*g.generator, ids, 64);
  EXPECT_EQ(one.predicted, int64_t(ids.size()) - 1);
  EXPECT_NEAR(one.perplexity(), want, 0.03 * want);

  // Windows of 4: three fresh sequences (4 + 4 + 3 predictions), each without the earlier context.
  const PerplexityResult split = perplexity(*g.generator, ids, 4);
  EXPECT_EQ(split.predicted, int64_t(ids.size()) - 1);
  EXPECT_NE(split.nll_sum, one.nll_sum);
  EXPECT_EQ(g.cache->free_blocks(), g.cache->num_blocks());
}
