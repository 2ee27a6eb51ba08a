#pragma once
// Perplexity of a token sequence under the model: exp(mean negative log-likelihood of each token
// given the ones before it), evaluated in non-overlapping windows of `window` predictions (each
// window is a fresh sequence of window + 1 tokens), as the usual evaluation scripts do.
#include <cstdint>
#include <span>

#include "engine/generator.h"

namespace mxmoe {

struct PerplexityResult {
  double nll_sum = 0;     // natural log
  int64_t predicted = 0;  // tokens scored
  double perplexity() const;
};

PerplexityResult perplexity(Generator& generator, std::span<const int32_t> ids, int64_t window);

}  // namespace mxmoe
