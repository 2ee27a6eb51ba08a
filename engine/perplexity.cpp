#include "engine/perplexity.h"

#include <cmath>
#include <vector>

#include "engine/error.h"
#include "kernels/matmul_ref.h"

namespace mxmoe {

double PerplexityResult::perplexity() const { return predicted ? std::exp(nll_sum / double(predicted)) : 0.0; }

PerplexityResult perplexity(Generator& generator, std::span<const int32_t> ids, int64_t window) {
  MXMOE_CHECK(window >= 1, "perplexity window must be >= 1, got ", window);
  MXMOE_CHECK(ids.size() >= 2, "perplexity needs at least 2 tokens, got ", ids.size());
  KvCache& cache = generator.cache();
  PerplexityResult result;
  for (size_t start = 0; start + 1 < ids.size(); start += size_t(window)) {
    const size_t end = std::min(ids.size(), start + size_t(window) + 1);  // window + 1 tokens
    const std::vector<int32_t> chunk(ids.begin() + long(start), ids.begin() + long(end) - 1);
    std::vector<int32_t> rows(chunk.size());
    for (size_t i = 0; i < rows.size(); ++i) rows[i] = int32_t(i);
    const int seq = cache.add_sequence();
    const Tensor logits = generator.step(std::vector<int>{seq}, {chunk}, rows).to(Device::cpu, generator.stream());
    cache.free_sequence(seq);
    const std::vector<float> v = to_f32_vector(logits);
    const int64_t vocab = logits.size(1);
    for (size_t i = 0; i < chunk.size(); ++i) {
      const float* row = v.data() + int64_t(i) * vocab;
      double max = row[0], sum = 0;
      for (int64_t j = 1; j < vocab; ++j) max = std::max(max, double(row[j]));
      for (int64_t j = 0; j < vocab; ++j) sum += std::exp(double(row[j]) - max);
      result.nll_sum += std::log(sum) + max - double(row[ids[start + i + 1]]);
      ++result.predicted;
    }
  }
  return result;
}

}  // namespace mxmoe
