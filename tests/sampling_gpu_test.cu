// Sampling kernel vs the CPU references on fresh random logits: greedy is argmax (ties -> lowest
// id), sampled tokens equal the row reference's (same algorithm, same random numbers), their
// frequencies match Hugging Face's filtered distribution (chi-square), excluded tokens are never
// drawn, and the same seeds reproduce the same tokens; also with thousands of tokens tied at the
// filter boundaries, masked (-inf) logits, and a vocabulary whose rows live in the workspace.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/stream.h"
#include "kernels/sampling.h"
#include "sampling_test.h"
#include "test_util.h"

using namespace mxmoe;
using namespace mxmoe::testing;

namespace {

struct Rows {
  std::vector<float> logits;  // [B, V]
  std::vector<SamplingParams> params;
  std::vector<int32_t> offsets{0}, prev;

  // `steps` rows of the same logits, params and previous tokens at steps 0, 1, ...: the draws of
  // one sequence, each with its own random number.
  void add_steps(const std::vector<float>& x, const SamplingParams& c, const std::vector<int32_t>& prev_tokens,
                 int64_t steps) {
    for (int64_t s = 0; s < steps; ++s) {
      logits.insert(logits.end(), x.begin(), x.end());
      SamplingParams p = c;
      p.step = uint64_t(s);
      params.push_back(p);
      prev.insert(prev.end(), prev_tokens.begin(), prev_tokens.end());
      offsets.push_back(int32_t(prev.size()));
    }
  }
};

// Runs the kernel on rows (logits as f32 or bf16) and returns the tokens.
std::vector<int32_t> run_kernel(const Rows& r, int64_t vocab, DType dtype) {
  const int64_t rows = int64_t(r.params.size());
  Tensor logits = Tensor::empty({rows, vocab}, DType::f32, Device::cpu);
  std::copy(r.logits.begin(), r.logits.end(), logits.data_as<float>());
  if (dtype == DType::bf16) {
    Tensor b = Tensor::empty({rows, vocab}, DType::bf16, Device::cpu);
    from_f32_vector(r.logits, b);
    logits = b;
  }
  Tensor params = Tensor::empty({rows * int64_t(sizeof(SamplingParams))}, DType::u8, Device::cpu);
  std::memcpy(params.data(), r.params.data(), params.nbytes());
  Tensor off = Tensor::empty({rows + 1}, DType::i32, Device::cpu), prev = Tensor::empty({std::max<int64_t>(1, int64_t(r.prev.size()))}, DType::i32, Device::cpu);
  std::copy(r.offsets.begin(), r.offsets.end(), off.data_as<int32_t>());
  std::copy(r.prev.begin(), r.prev.end(), prev.data_as<int32_t>());
  Tensor ws = Tensor::empty({rows, vocab}, DType::f32, Device::cuda), tokens = Tensor::empty({rows}, DType::i32, Device::cuda);
  CUDA_CHECK(cudaMemset(tokens.data(), 0xFF, tokens.nbytes()));  // -1
  Stream stream;
  sample(logits.to(Device::cuda), params.to(Device::cuda), off.to(Device::cuda), prev.to(Device::cuda), ws, tokens, stream);
  stream.synchronize();
  const Tensor h = tokens.to(Device::cpu);
  return {h.data_as<int32_t>(), h.data_as<int32_t>() + rows};
}

// The logits the kernel sees (bf16 rounding when the input is bf16).
std::span<const float> row_of(const std::vector<float>& all, int64_t b, int64_t vocab) {
  return {all.data() + b * vocab, size_t(vocab)};
}

std::vector<float> rounded(const std::vector<float>& v, DType dtype) {
  if (dtype == DType::f32) return v;
  Tensor b = Tensor::empty({int64_t(v.size())}, DType::bf16, Device::cpu);
  from_f32_vector(v, b);
  return to_f32_vector(b);
}

}  // namespace

TEST(SamplingGpu, GreedyIsArgmaxLowestIdOnTies) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  const int64_t vocab = 151936, rows = 16;
  for (DType dtype : {DType::f32, DType::bf16}) {
    Rows r;
    std::normal_distribution<float> d(0.f, 3.f);
    r.logits.resize(size_t(rows * vocab));
    for (float& x : r.logits) x = d(rng);
    for (int64_t b = 0; b < rows; ++b) {
      float* row = r.logits.data() + b * vocab;
      const float top = *std::max_element(row, row + vocab) + 1.f;
      const int64_t i = int64_t(rng() % uint64_t(vocab)), j = int64_t(rng() % uint64_t(vocab));
      row[std::max(i, j)] = top;  // a tie: the lower id must win
      row[std::min(i, j)] = top;
      SamplingParams p;
      p.temperature = 0.f;
      r.params.push_back(p);
      r.offsets.push_back(0);
    }
    const std::vector<int32_t> got = run_kernel(r, vocab, dtype);
    const std::vector<float> seen = rounded(r.logits, dtype);
    for (int64_t b = 0; b < rows; ++b) {
      const std::span<const float> row = row_of(seen, b, vocab);
      EXPECT_EQ(got[size_t(b)], int32_t(std::max_element(row.begin(), row.end()) - row.begin())) << "row " << b;
    }
  }
}

TEST(SamplingGpu, DrawsMatchReferenceAndDistribution) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  const int64_t vocab = 64, draws = 4000;
  const std::vector<SamplingParams> cases = sampling_cases(rng());
  const std::vector<int32_t> prev = {3, 10, 10, 17};
  Rows r;
  std::vector<std::vector<float>> case_logits;
  std::normal_distribution<float> d(0.f, 2.f);
  for (const SamplingParams& c : cases) {
    std::vector<float> x(static_cast<size_t>(vocab));
    for (float& v : x) v = d(rng);
    case_logits.push_back(x);
    r.add_steps(x, c, prev, draws);
  }
  const std::vector<int32_t> got = run_kernel(r, vocab, DType::f32);
  EXPECT_EQ(run_kernel(r, vocab, DType::f32), got) << "same seeds must give the same tokens";
  for (size_t c = 0; c < cases.size(); ++c) {
    const std::vector<double> probs = sampling_distribution_ref(case_logits[c], cases[c], prev);
    std::vector<int64_t> counts(static_cast<size_t>(vocab), 0);
    int64_t mismatches = 0;
    for (int64_t s = 0; s < draws; ++s) {
      const size_t row = c * size_t(draws) + size_t(s);
      const int32_t token = got[row];
      ASSERT_TRUE(token >= 0 && token < vocab) << "row " << row << " token " << token;
      ++counts[size_t(token)];
      mismatches += token != sample_row_ref(case_logits[c], r.params[row], prev);
    }
    EXPECT_LE(mismatches, draws / 1000) << "case " << c;  // only exp() rounding at a boundary may differ
    expect_matches_distribution(counts, probs, draws);
  }
}

namespace {

// Rows of every sampling case over `steps` steps, logits from gen(rng, vocab) (rounded to dtype)
// and 200 random previous tokens each: every drawn token has nonzero probability under Hugging
// Face's filters and is the row reference's (one may differ by exp() rounding at a boundary).
template <class Gen>
void expect_filters_match_reference(int64_t vocab, int64_t steps, DType dtype, Gen gen) {
  std::mt19937_64 rng(fresh_seed());
  const std::vector<SamplingParams> cases = sampling_cases(rng());
  Rows r;
  std::vector<std::vector<float>> case_logits;
  std::vector<std::vector<int32_t>> case_prev;
  for (const SamplingParams& c : cases) {
    const std::vector<float> x = gen(rng, vocab);
    case_logits.push_back(rounded(x, dtype));
    std::vector<int32_t> prev;
    for (int i = 0; i < 200; ++i) prev.push_back(int32_t(rng() % uint64_t(vocab)));
    case_prev.push_back(prev);
    r.add_steps(x, c, prev, steps);
  }
  const std::vector<int32_t> got = run_kernel(r, vocab, dtype);
  int64_t mismatches = 0;
  for (size_t c = 0; c < cases.size(); ++c) {
    const std::vector<double> probs = sampling_distribution_ref(case_logits[c], cases[c], case_prev[c]);
    for (int64_t s = 0; s < steps; ++s) {
      const size_t row = c * size_t(steps) + size_t(s);
      const int32_t token = got[row];
      ASSERT_TRUE(token >= 0 && token < vocab) << "row " << row << " token " << token;
      EXPECT_GT(probs[size_t(token)], 0.0) << "case " << c << " drew excluded token " << token;
      mismatches += token != sample_row_ref(case_logits[c], r.params[row], case_prev[c]);
    }
  }
  EXPECT_LE(mismatches, 1) << dtype_name(dtype) << " vocabulary " << vocab;
}

std::vector<float> normal_logits(std::mt19937_64& rng, int64_t vocab) {
  std::normal_distribution<float> d(0.f, 2.5f);
  std::vector<float> x(static_cast<size_t>(vocab));
  for (float& v : x) v = d(rng);
  return x;
}

}  // namespace

TEST(SamplingGpu, LargeVocabularyFiltersMatchReference) {
  MXMOE_REQUIRE_GPU();
  for (DType dtype : {DType::f32, DType::bf16}) expect_filters_match_reference(151936, 12, dtype, normal_logits);
}

// A row slice too large for shared memory lives in the workspace.
TEST(SamplingGpu, VocabularyBeyondSharedMemoryMatchesReference) {
  MXMOE_REQUIRE_GPU();
  expect_filters_match_reference(500000, 2, DType::f32, normal_logits);
}

// Logits on a coarse grid (thousands of tokens tie at every top-k / top-p boundary: all tied
// tokens are kept) with 1% masked to -inf.
TEST(SamplingGpu, TiesAndMaskedLogitsMatchReference) {
  MXMOE_REQUIRE_GPU();
  expect_filters_match_reference(151936, 12, DType::f32, [](std::mt19937_64& rng, int64_t vocab) {
    std::vector<float> x = normal_logits(rng, vocab);
    for (float& v : x) v = rng() % 100 == 0 ? -INFINITY : std::round(v * 2.f) / 2.f;
    return x;
  });
}
