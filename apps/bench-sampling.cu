// Device sampler time per call (CUDA-graph replays) for a batch of rows over Qwen3's vocabulary
// (151936): greedy, and temperature 0.7 alone, with each filter alone (top-k 50, top-p 0.9,
// min-p 0.05, repetition penalty 1.1 over 256 previous tokens) and with all of them.
#include <cstdio>
#include <cstring>
#include <random>

#include "apps/bench_util.h"
#include "kernels/sampling.h"

using namespace mxmoe;

namespace {

constexpr int64_t kVocab = 151936, kPrev = 256;

struct Case {
  const char* name;
  SamplingParams params;
};

std::vector<Case> cases() {
  const auto make = [](float t, int k, float top_p, float min_p, float penalty) {
    SamplingParams p;
    p.temperature = t;
    p.top_k = k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.repetition_penalty = penalty;
    return p;
  };
  return {{"greedy", make(0.f, 0, 1.f, 0.f, 1.f)},          {"temperature", make(0.7f, 0, 1.f, 0.f, 1.f)},
          {"top-k 50", make(0.7f, 50, 1.f, 0.f, 1.f)},       {"top-p 0.9", make(0.7f, 0, 0.9f, 0.f, 1.f)},
          {"min-p 0.05", make(0.7f, 0, 1.f, 0.05f, 1.f)},    {"penalty 1.1", make(0.7f, 0, 1.f, 0.f, 1.1f)},
          {"all", make(0.7f, 50, 0.9f, 0.05f, 1.1f)}};
}

// Microseconds per call of sample() on `rows` rows of N(0, 3) logits, every row with params p.
double time_us(const Tensor& logits, const Tensor& prev_offsets, const Tensor& prev_ids, SamplingParams p, cudaStream_t stream) {
  const int64_t rows = logits.size(0);
  std::vector<SamplingParams> params(static_cast<size_t>(rows), p);
  for (size_t b = 0; b < params.size(); ++b) params[b].seed = b;
  Tensor pbytes = Tensor::empty({rows * int64_t(sizeof(SamplingParams))}, DType::u8, Device::cpu);
  std::memcpy(pbytes.data(), params.data(), pbytes.nbytes());
  const Tensor pd = pbytes.to(Device::cuda);
  Tensor ws = Tensor::empty({rows, kVocab}, DType::f32, Device::cuda), tokens = Tensor::empty({rows}, DType::i32, Device::cuda);
  const double ms = bench::graph_ms_per_call(stream, 16, [&](int) { sample(logits, pd, prev_offsets, prev_ids, ws, tokens, stream); });
  return ms * 1e3;
}

}  // namespace

int main() {
  Stream stream;
  const std::vector<Case> all = cases();
  std::printf("sampler, vocabulary 151936, f32 logits: us per call (us per row)\n| rows |");
  for (const Case& c : all) std::printf(" %s |", c.name);
  std::printf("\n|---|");
  for (size_t i = 0; i < all.size(); ++i) std::printf("---|");
  std::printf("\n");
  for (int rows : {1, 8, 64}) {
    std::mt19937_64 rng(1);
    std::normal_distribution<float> d(0.f, 3.f);
    Tensor logits = Tensor::empty({rows, kVocab}, DType::f32, Device::cpu);
    for (int64_t i = 0; i < logits.numel(); ++i) logits.data_as<float>()[i] = d(rng);
    Tensor off = Tensor::empty({rows + 1}, DType::i32, Device::cpu), prev = Tensor::empty({rows * kPrev}, DType::i32, Device::cpu);
    for (int b = 0; b <= rows; ++b) off.data_as<int32_t>()[b] = int32_t(b * kPrev);
    for (int64_t i = 0; i < prev.numel(); ++i) prev.data_as<int32_t>()[i] = int32_t(rng() % kVocab);
    const Tensor ld = logits.to(Device::cuda), od = off.to(Device::cuda), prevd = prev.to(Device::cuda);
    std::printf("| %d |", rows);
    for (const Case& c : all) {
      const double us = time_us(ld, od, prevd, c.params, stream);
      std::printf(" %.1f (%.2f) |", us, us / rows);
    }
    std::printf("\n");
  }
  return 0;
}
