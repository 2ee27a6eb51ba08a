#pragma once
// Shared by engine_tp_test.cpp (CPU backend, simulated ranks, CI) and engine_tp_gpu_test.cu (NCCL):
// the scheduler over a TensorParallelRunner, checked against TensorParallelRuntime::generate at
// the same tp run alone, one prompt at a time. On the CPU backend rows do not depend on the batch,
// so tokens are equal (tie margin 0); on GPUs batched and recomputed steps round differently, so
// tokens may part at a near-tie (engine_test_util.h: expect_same_tokens).
#include <atomic>
#include <chrono>
#include <map>
#include <thread>

#include "engine/tensor_parallel.h"
#include "engine_test_util.h"
#include "loader/generation_config.h"
#include "model_golden_tp.h"

namespace mxmoe::testing {

struct TpCase {
  std::string name, dir, scheme;
  int tp = 2;  // 1: a communicator of one rank all the same (the tensor-parallel path on one device)
  Device device = Device::cpu;
};

inline void PrintTo(const TpCase& c, std::ostream* os) { *os << c.name; }

inline TensorParallelOptions tp_options(const TpCase& c, int64_t kv_blocks) {
  TensorParallelOptions o;
  o.model_dir = c.dir;
  o.model.quant.scheme = c.scheme;
  o.model.device = c.device;
  o.load.quiet = true;
  o.kv_cache.num_blocks = kv_blocks;
  o.local_ranks = c.tp;
  o.communicator_for_one_rank = true;
  return o;
}

// TensorParallelRuntime::generate on one prompt at a time (check_concurrent_requests' Reference).
class TpAloneReference {
 public:
  explicit TpAloneReference(const TpCase& c)
      : runtime_(tp_options(c, 64)), stop_ids_(load_stop_ids(c.dir, runtime_.config())) {}

  std::vector<int32_t> generate(const std::vector<int32_t>& prompt, const SamplingOptions& sampling, int max_new_tokens,
                                bool ignore_eos = false) {
    GenerationOptions options;
    options.sampling = to_sampling_params(sampling);
    options.max_new_tokens = max_new_tokens;
    if (!ignore_eos) options.stop_ids = stop_ids_;
    return runtime_.generate({prompt}, options)[0].tokens;
  }

  // Logit of `a` minus logit of `b` after `ids` (rank 0's logits; every rank holds the same).
  double margin(const std::vector<int32_t>& ids, int32_t a, int32_t b) {
    std::vector<float> v;
    runtime_.run_on_ranks([&](TensorParallelRuntime::Rank& r) {
      const int seq = r.cache->add_sequence();
      const Tensor logits = r.generator->step(std::vector<int>{seq}, {ids}, {int32_t(ids.size()) - 1})
                                .to(Device::cpu, r.generator->stream());
      r.cache->free_sequence(seq);
      if (r.local == 0) v = to_f32_vector(logits);
    });
    return double(v[size_t(a)]) - double(v[size_t(b)]);
  }

 private:
  TensorParallelRuntime runtime_;
  std::vector<int32_t> stop_ids_;
};

// One reference per case, kept between tests (loading it is the slow part). GPU tests clear them
// in TearDownTestSuite: NCCL and CUDA state must not outlive the program's main.
inline std::map<std::string, std::unique_ptr<TpAloneReference>>& tp_references() {
  static std::map<std::string, std::unique_ptr<TpAloneReference>> references;
  return references;
}

inline TpAloneReference& tp_reference(const TpCase& c) {
  auto& r = tp_references()[c.name];
  if (!r) r = std::make_unique<TpAloneReference>(c);
  return *r;
}

// The Engine's pieces, held open: a runtime, its runner and a scheduler over them.
struct TpScheduler {
  TpScheduler(const TpCase& c, int64_t kv_blocks, int64_t max_model_len)
      : runtime(tp_options(c, kv_blocks)), runner(runtime) {
    tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_file(demo_model_dir() + "/tokenizer.json"));
    SchedulerOptions s;
    s.max_model_len = max_model_len;
    s.vocab_size = runtime.config().vocab_size;
    scheduler = std::make_unique<Scheduler>(runner, *tokenizer, s);
  }

  // Greedy, no stop ids; the prompt's ids folded into the model's vocabulary.
  SequenceRequest greedy(const std::string& prompt, int max_new_tokens) const {
    SequenceRequest r;
    r.prompt = tokenizer->encode(prompt, true);
    for (int32_t& id : r.prompt) id %= int32_t(runtime.config().vocab_size);
    r.sampling.temperature = 0.f;
    r.max_new_tokens = max_new_tokens;
    return r;
  }

  // Every rank's pool is whole again.
  void expect_all_blocks_free(const std::string& what) const {
    for (int i = 0; i < runtime.local_size(); ++i)
      EXPECT_EQ(runtime.rank(i).cache->free_blocks(), runtime.rank(i).cache->num_blocks()) << what << ": rank " << i;
  }

  TensorParallelRuntime runtime;
  TensorParallelRunner runner;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<Scheduler> scheduler;  // last: its thread stops first
};

inline Result wait(const std::shared_ptr<RequestState>& state) { return RequestHandle(state).wait(); }

// A KV pool of 8 blocks for 8 sequences: the scheduler preempts (every rank drops the same
// sequence) and recomputes, and every request still equals the runtime alone.
inline void check_preemption_on_every_rank(const TpCase& c, double tie_margin) {
  TpScheduler s(c, 8, 128);  // 128 tokens for 8 sequences of up to ~110
  const std::vector<std::string> prompts = demo_prompts(8);
  std::vector<SequenceRequest> requests;
  std::vector<std::shared_ptr<RequestState>> states;
  for (size_t i = 0; i < prompts.size(); ++i) {
    SequenceRequest r = s.greedy(prompts[i], 24 + int(i) * 2);
    if (int64_t(r.prompt.size()) + r.max_new_tokens > 128) continue;
    requests.push_back(r);
    states.push_back(s.scheduler->submit(r));
  }
  ASSERT_GE(requests.size(), 6u);
  // Every request ends before the reference runs: two NCCL worlds over the same GPUs must not have
  // collectives in flight at once (NCCL's rule for concurrent communicators; they can deadlock).
  std::vector<Result> results;
  for (const auto& state : states) results.push_back(wait(state));
  int preempted = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    const Result& r = results[i];
    ASSERT_EQ(r.finish, FinishReason::length) << r.error;
    const std::vector<int32_t> want =
        tp_reference(c).generate(requests[i].prompt, {.temperature = 0.f}, requests[i].max_new_tokens, true);
    expect_same_tokens(tp_reference(c), requests[i].prompt, r.token_ids, want, tie_margin,
                       "request " + std::to_string(i) + " (preempted " + std::to_string(r.preemptions) + " times)");
    preempted += r.preemptions > 0;
  }
  EXPECT_GT(preempted, 0);
  EXPECT_GT(s.scheduler->stats().preemptions, 0);
  s.expect_all_blocks_free("after preemption");
}

// Cancellation from the token callback, from another thread while running, and right after
// submitting: every rank's pool is whole again, and a request beside them is unaffected.
inline void check_cancellation_on_every_rank(const TpCase& c, double tie_margin) {
  TpScheduler s(c, 64, 256);
  SequenceRequest cut = s.greedy("In the beginning", 50);
  int seen = 0;
  cut.on_token = [&](int32_t, std::string_view) { return ++seen < 3; };  // false on the 3rd token
  const Result r = wait(s.scheduler->submit(cut));
  EXPECT_EQ(r.finish, FinishReason::cancelled);
  EXPECT_EQ(r.token_ids.size(), 3u);
  s.expect_all_blocks_free("cancelled from the callback");

  std::atomic<int> tokens{0};
  SequenceRequest long_one = s.greedy("In the beginning", 50);
  long_one.on_token = [&](int32_t, std::string_view) {
    ++tokens;
    return true;
  };
  const auto running = s.scheduler->submit(long_one);
  const SequenceRequest other_request = s.greedy("And God said", 20);
  const auto other = s.scheduler->submit(other_request);
  // Until its first token, or its end (a failing step ends it with an error instead).
  while (tokens == 0 && !RequestHandle(running).done()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  RequestHandle(running).cancel();
  const auto queued = s.scheduler->submit(s.greedy("And God said", 20));
  RequestHandle(queued).cancel();
  EXPECT_EQ(wait(running).finish, FinishReason::cancelled);
  EXPECT_EQ(wait(queued).finish, FinishReason::cancelled);
  const Result finished = wait(other);
  expect_same_tokens(tp_reference(c), other_request.prompt, finished.token_ids,
                     tp_reference(c).generate(other_request.prompt, {.temperature = 0.f}, 20, true), tie_margin,
                     "the request beside the cancelled ones");
  s.expect_all_blocks_free("cancelled from another thread");
}

// A rank that throws aborts the group (as a failing step does): the runner fails every later step
// with that error, so requests end with it instead of waiting, and give their blocks back.
inline void check_failed_rank_fails_requests(const TpCase& c) {
  TpScheduler s(c, 64, 256);
  const int last = s.runtime.local_size() - 1;
  EXPECT_NE(error_of([&] {
              s.runtime.run_on_ranks([&](TensorParallelRuntime::Rank& r) {
                if (r.local == last) throw Error("injected rank failure");
              });
            }).find("injected rank failure"),
            std::string::npos);
  for (int i = 0; i < 2; ++i) {
    const Result r = wait(s.scheduler->submit(s.greedy("And God said", 8)));
    EXPECT_EQ(r.finish, FinishReason::error);
    EXPECT_NE(r.error.find("injected rank failure"), std::string::npos) << r.error;
    EXPECT_NE(r.error.find("every later step fails"), std::string::npos) << r.error;
  }
  s.expect_all_blocks_free("after the failure");
}

}  // namespace mxmoe::testing
