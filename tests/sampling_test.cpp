// Sampler references: the filtered distribution (Hugging Face's steps with a sort) has the
// defining properties of each filter, and the row reference (the kernel's algorithm: radix
// thresholds, fixed-point masses, counter-based random numbers) draws from exactly that
// distribution, reproducibly per seed.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "engine/error.h"
#include "kernels/sampling.h"
#include "sampling_test.h"
#include "test_util.h"

using namespace mxmoe;
using namespace mxmoe::testing;

namespace {

std::vector<float> random_logits(std::mt19937_64& rng, int n, float std = 2.f) {
  std::normal_distribution<float> d(0.f, std);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = d(rng);
  return v;
}

}  // namespace

TEST(SamplingRef, DistributionHasEachFilterProperty) {
  std::mt19937_64 rng(fresh_seed());
  const std::vector<float> x = random_logits(rng, 200);
  const std::vector<int32_t> none;
  SamplingParams p;
  p.top_k = 7;
  std::vector<double> d = sampling_distribution_ref(x, p, none);
  EXPECT_EQ(std::count_if(d.begin(), d.end(), [](double v) { return v > 0; }), 7);
  EXPECT_NEAR(std::accumulate(d.begin(), d.end(), 0.0), 1.0, 1e-12);
  p = SamplingParams{};
  p.top_p = 0.5f;
  d = sampling_distribution_ref(x, p, none);
  // The kept set is the smallest top set whose full-softmax mass reaches 0.5.
  const std::vector<double> full = sampling_distribution_ref(x, SamplingParams{}, none);
  std::vector<size_t> order(x.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return x[a] > x[b]; });
  double mass = 0;
  for (size_t i : order) {
    EXPECT_EQ(d[i] > 0, mass < 0.5) << "rank with mass above " << mass;
    mass += full[i];
  }
  p = SamplingParams{};
  p.min_p = 0.2f;
  d = sampling_distribution_ref(x, p, none);
  const double top = *std::max_element(full.begin(), full.end());
  for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(d[i] > 0, full[i] >= 0.2 * top);
}

TEST(SamplingRef, GreedyIsArgmaxWithPenaltyAndLowestIdOnTies) {
  std::vector<float> x = {1.f, 3.f, -2.f, 3.f, 2.9f, -0.5f};
  SamplingParams p;
  p.temperature = 0.f;
  EXPECT_EQ(sample_row_ref(x, p, {}), 1);  // tie of 1 and 3 -> 1
  p.repetition_penalty = 2.f;
  const std::vector<int32_t> prev = {1, 3, 3, 99, -4};  // out-of-range ids ignored
  EXPECT_EQ(sample_row_ref(x, p, prev), 4);  // 3 / 2 = 1.5 < 2.9
  const std::vector<float> negative = {-1.f, -1.5f};
  const std::vector<int32_t> prev2 = {0};  // negative logits are multiplied: -1 · 2 = -2 < -1.5
  EXPECT_EQ(sample_row_ref(negative, p, prev2), 1);
}

TEST(SamplingRef, RowSamplerDrawsTheFilteredDistribution) {
  std::mt19937_64 rng(fresh_seed());
  const int n = 64;
  const int64_t draws = 40000;
  const std::vector<int32_t> prev = {3, 10, 10, 17};
  for (SamplingParams p : sampling_cases(rng())) {
    const std::vector<float> x = random_logits(rng, n);
    const std::vector<double> probs = sampling_distribution_ref(x, p, prev);
    std::vector<int64_t> counts(size_t(n), 0);
    for (int64_t s = 0; s < draws; ++s) {
      p.step = uint64_t(s);
      ++counts[size_t(sample_row_ref(x, p, prev))];
    }
    expect_matches_distribution(counts, probs, draws);
  }
}

TEST(SamplingRef, SameSeedSameTokens) {
  std::mt19937_64 rng(fresh_seed());
  const std::vector<float> x = random_logits(rng, 1000, 1.f);
  SamplingParams a;
  a.seed = 42;
  SamplingParams b = a;
  b.seed = 43;
  int differ = 0;
  for (uint64_t s = 0; s < 50; ++s) {
    a.step = b.step = s;
    EXPECT_EQ(sample_row_ref(x, a, {}), sample_row_ref(x, a, {}));
    differ += sample_row_ref(x, a, {}) != sample_row_ref(x, b, {});
  }
  EXPECT_GT(differ, 25);
}

TEST(SamplingRef, BadParametersAreClearErrors) {
  SamplingParams p;
  p.top_p = 0.f;
  EXPECT_THROW(check_sampling_params(p), Error);
  p = SamplingParams{};
  p.temperature = -1.f;
  EXPECT_THROW(check_sampling_params(p), Error);
  p = SamplingParams{};
  p.min_p = 1.5f;
  EXPECT_THROW(check_sampling_params(p), Error);
}
