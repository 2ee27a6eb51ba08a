#pragma once
// Shared by engine_test.cpp (CPU backend, CI) and engine_gpu_test.cu: the Engine's results are
// checked against Generator::generate run alone, one prompt at a time, on a separate copy of the
// demo model (models/demo: a tiny Qwen3-MoE with a real tokenizer).
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <thread>

#include "engine/generator.h"
#include "engine/model_loading.h"
#include "engine/mxmoe.h"
#include "engine/scheduler.h"
#include "test_util.h"

namespace mxmoe::testing {

inline std::string demo_model_dir() { return std::string(MXMOE_TEST_DATA) + "/../../models/demo"; }

// The CPU tests run bf16 weights (the reference backend dequantizes MXFP8 weights at every step,
// 6x slower); the GPU tests the default MXFP8.
inline std::string demo_quantization(Device device) { return device == Device::cuda ? "mxfp8" : "bf16"; }

inline EngineOptions demo_engine_options(Device device) {
  EngineOptions o;
  o.model = demo_model_dir();
  o.device = device == Device::cuda ? "cuda" : "cpu";
  o.quantization = demo_quantization(device);
  o.max_model_len = 256;
  o.kv_cache_blocks = 128;  // 2048 tokens
  return o;
}

// Prompts of 1 to ~100 words from the held-out text, each starting at a different verse.
inline std::vector<std::string> demo_prompts(size_t count) {
  std::ifstream in(demo_model_dir() + "/heldout.txt");
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  std::vector<std::string> prompts;
  for (size_t i = 0; i < count; ++i) {
    const size_t begin = (i * 997) % (words.size() - 200), length = 1 + (i * 37) % 100;
    std::string p;
    for (size_t w = begin; w < begin + length; ++w) p += (p.empty() ? "" : " ") + words[w];
    prompts.push_back(p);
  }
  return prompts;
}

// Generator::generate on one prompt at a time: what each Engine request must reproduce.
class AloneReference {
 public:
  explicit AloneReference(Device device) {
    ModelLoadOptions load;
    load.dir = demo_model_dir();
    load.device = device;
    load.quiet = true;
    load.quant.scheme = demo_quantization(device);
    model_ = load_model(load);
    KvCacheConfig kv = model_.model->kv_cache_config();
    kv.num_blocks = 64;
    cache_ = std::make_unique<KvCache>(kv, device);
    generator_ = std::make_unique<Generator>(*model_.model, *cache_);
  }

  std::vector<int32_t> generate(const std::vector<int32_t>& prompt, const SamplingOptions& sampling, int max_new_tokens,
                                bool ignore_eos = false) {
    GenerationOptions options;
    options.sampling = to_sampling_params(sampling);
    options.max_new_tokens = max_new_tokens;
    if (!ignore_eos) options.stop_ids = model_.stop_ids;
    return generator_->generate({prompt}, options)[0].tokens;
  }

  // Logit of `a` minus logit of `b` after `ids` (the margin by which greedy prefers a).
  double margin(const std::vector<int32_t>& ids, int32_t a, int32_t b) {
    const int seq = cache_->add_sequence();
    const Tensor logits = generator_->step(std::vector<int>{seq}, {ids}, {int32_t(ids.size()) - 1})
                              .to(Device::cpu, generator_->stream());
    cache_->free_sequence(seq);
    const std::vector<float> v = to_f32_vector(logits);
    return double(v[size_t(a)]) - double(v[size_t(b)]);
  }

  const Tokenizer& tokenizer() const { return *model_.tokenizer; }

 private:
  LoadedModel model_;
  std::unique_ptr<KvCache> cache_;
  std::unique_ptr<Generator> generator_;
};

// A reference (AloneReference, or engine_tp_test.cpp's runtime at the same tensor parallel size)
// has generate(prompt, sampling, max_new_tokens, ignore_eos) and margin(ids, a, b).

// Greedy tokens `got` equal `want` (the reference alone). With tie_margin > 0 they may part at a
// near-tie: where the reference prefers its token by less than tie_margin (logits) — batched GPU
// kernels round differently from a batch of one. Nothing after the parting is compared.
template <class Reference>
void expect_same_tokens(Reference& ref, const std::vector<int32_t>& prompt, const std::vector<int32_t>& got,
                               const std::vector<int32_t>& want, double tie_margin, const std::string& what) {
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  if (i == got.size() && i == want.size()) return;
  if (tie_margin > 0 && i < got.size() && i < want.size()) {
    std::vector<int32_t> ids = prompt;
    ids.insert(ids.end(), want.begin(), want.begin() + long(i));
    const double m = ref.margin(ids, want[i], got[i]);
    std::printf("[engine] %s: parts from the reference at token %zu (margin %.4f)\n", what.c_str(), i, m);
    EXPECT_LT(m, tie_margin) << what << ": token " << i << " is " << got[i] << " instead of " << want[i];
    return;
  }
  ADD_FAILURE() << what << ": " << got.size() << " tokens, the reference " << want.size() << "; first difference at "
                << i;
}

// 8 threads submit 8 x per_thread requests of different lengths (greedy and seeded sampling) at
// once; each result equals its prompt run alone, and the scheduler put several sequences in one step.
template <class Reference>
void check_concurrent_requests(Engine& engine, Reference& ref, double tie_margin, int per_thread = 4) {
  constexpr int kThreads = 8;
  const std::vector<std::string> prompts = demo_prompts(kThreads * per_thread);
  std::vector<Request> requests(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    requests[i].prompt = prompts[i];
    requests[i].max_new_tokens = 4 + int(i * 7) % 29;
    requests[i].sampling.temperature = i % 4 == 3 ? 0.8f : 0.f;
    requests[i].sampling.seed = i;
  }
  std::vector<Result> results(requests.size());
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      std::vector<RequestHandle> handles;
      for (int k = 0; k < per_thread; ++k) handles.push_back(engine.submit(requests[size_t(t * per_thread + k)]));
      for (int k = 0; k < per_thread; ++k) results[size_t(t * per_thread + k)] = handles[size_t(k)].wait();
    });
  for (std::thread& t : threads) t.join();

  for (size_t i = 0; i < requests.size(); ++i) {
    const std::vector<int32_t> ids = engine.prompt_ids(requests[i]);
    const std::vector<int32_t> want = ref.generate(ids, requests[i].sampling, requests[i].max_new_tokens);
    ASSERT_NE(results[i].finish, FinishReason::error) << results[i].error;
    EXPECT_EQ(results[i].prompt_tokens, int64_t(ids.size()));
    // Seeded sampling is exact only on the CPU: a GPU near-tie changes the probabilities slightly.
    const bool sampled = requests[i].sampling.temperature > 0;
    if (sampled && tie_margin > 0) continue;
    expect_same_tokens(ref, ids, results[i].token_ids, want, tie_margin, "request " + std::to_string(i));
  }
  const EngineStats s = engine.stats();
  std::printf("[engine] %lld steps, at most %lld sequences in one step, %lld prompt + %lld generated tokens\n",
              (long long)s.steps, (long long)s.max_step_sequences, (long long)s.prompt_tokens,
              (long long)s.generated_tokens);
  EXPECT_GT(s.max_step_sequences, 1) << "the scheduler never batched two sequences";
  EXPECT_EQ(s.kv_free_blocks, s.kv_blocks);
}

}  // namespace mxmoe::testing
