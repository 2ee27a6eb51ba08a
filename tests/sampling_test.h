#pragma once
// Shared by the sampling CPU and GPU tests: parameter sets that exercise every filter, and the
// chi-square check of observed token counts against a distribution.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/sampling.h"

namespace mxmoe::testing {

inline std::vector<SamplingParams> sampling_cases(uint64_t seed) {
  std::vector<SamplingParams> c;
  const auto add = [&](float t, int k, float p, float min_p, float pen) {
    SamplingParams s;
    s.temperature = t;
    s.top_k = k;
    s.top_p = p;
    s.min_p = min_p;
    s.repetition_penalty = pen;
    s.seed = seed + c.size();
    c.push_back(s);
  };
  add(1.f, 0, 1.f, 0.f, 1.f);    // plain softmax
  add(0.7f, 0, 1.f, 0.f, 1.3f);  // temperature + repetition penalty
  add(1.f, 5, 1.f, 0.f, 1.f);    // top-k
  add(1.3f, 0, 0.6f, 0.f, 1.f);  // top-p
  add(1.f, 0, 1.f, 0.1f, 1.f);   // min-p
  add(0.9f, 12, 0.8f, 0.05f, 1.2f);  // all of them
  return c;
}

// Chi-square statistic of counts against probabilities (bins with expectation < 5 pooled);
// fails when it exceeds df + 6·sqrt(2·df) (about six standard deviations), or when a token of
// probability 0 was drawn.
inline void expect_matches_distribution(const std::vector<int64_t>& counts, const std::vector<double>& probs, int64_t draws) {
  double chi = 0, pooled_e = 0, pooled_o = 0;
  int bins = 0;
  for (size_t i = 0; i < probs.size(); ++i) {
    if (probs[i] == 0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " is excluded but was drawn";
      continue;
    }
    const double e = probs[i] * double(draws);
    if (e < 5) {
      pooled_e += e;
      pooled_o += double(counts[i]);
      continue;
    }
    chi += (double(counts[i]) - e) * (double(counts[i]) - e) / e;
    ++bins;
  }
  if (pooled_e > 0) {
    chi += (pooled_o - pooled_e) * (pooled_o - pooled_e) / std::max(pooled_e, 1.0);
    ++bins;
  }
  const double df = std::max(1, bins - 1);
  EXPECT_LT(chi, df + 6 * std::sqrt(2 * df)) << "chi-square " << chi << " over " << bins << " bins";
}

}  // namespace mxmoe::testing
