// The Engine and its scheduler under tensor parallelism on the CPU backend, with simulated ranks
// (engine/cpu_communicator.h). The demo model (4 query heads, 2 KV heads; its expert width 192
// allows tp = 2 only) runs through the Engine and the scheduler; the golden Qwen3-MoE of
// tests/data/models (no tokenizer of its own: the demo's decodes its ids, all < 256) through the
// scheduler at tp = 4, where its 2 KV heads are replicated. Concurrent requests equal
// TensorParallelRuntime::generate at the same tp run alone, token for token (the same numerics:
// the CPU backend's rows do not depend on the batch); preemption under a small KV pool and
// cancellation leave every rank's pool full; a failing rank fails the requests with its error and
// nothing hangs; a bad tp is an Error from the constructor.
#include <latch>
#include <map>

#include "engine/tensor_parallel.h"
#include "engine_test_util.h"
#include "loader/generation_config.h"
#include "model_golden_tp.h"

using namespace mxmoe;
using namespace mxmoe::testing;

namespace {

struct TpCase {
  std::string name, dir, scheme;
  int tp = 2;
};

void PrintTo(const TpCase& c, std::ostream* os) { *os << c.name; }

const TpCase kDemoTp2{"demo_tp2", demo_model_dir(), demo_quantization(Device::cpu), 2};

TensorParallelOptions tp_options(const TpCase& c, int64_t kv_blocks) {
  TensorParallelOptions o;
  o.model_dir = c.dir;
  o.model.quant.scheme = c.scheme;
  o.model.device = Device::cpu;
  o.load.quiet = true;
  o.kv_cache.num_blocks = kv_blocks;
  o.local_ranks = c.tp;
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

TpAloneReference& reference(const TpCase& c) {
  static std::map<std::string, std::unique_ptr<TpAloneReference>> references;
  auto& r = references[c.name];
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

Result wait(const std::shared_ptr<RequestState>& state) { return RequestHandle(state).wait(); }

TEST(EngineTp, ConcurrentRequestsMatchTheRuntimeAlone) {
  EngineOptions options = demo_engine_options(Device::cpu);
  options.tensor_parallel_size = kDemoTp2.tp;
  Engine engine(options);
  check_concurrent_requests(engine, reference(kDemoTp2), 0, 3);
}

class SchedulerTp : public ::testing::TestWithParam<TpCase> {};

TEST_P(SchedulerTp, SmallKvPoolPreemptsOnEveryRankAndStillMatches) {
  TpScheduler s(GetParam(), 8, 128);  // 128 tokens for 8 sequences of up to ~110
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
  int preempted = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    const Result r = wait(states[i]);
    ASSERT_EQ(r.finish, FinishReason::length) << r.error;
    EXPECT_EQ(r.token_ids, reference(GetParam()).generate(requests[i].prompt, {.temperature = 0.f}, requests[i].max_new_tokens,
                                                  true))
        << "request " << i << " (preempted " << r.preemptions << " times)";
    preempted += r.preemptions > 0;
  }
  EXPECT_GT(preempted, 0);
  EXPECT_GT(s.scheduler->stats().preemptions, 0);
  s.expect_all_blocks_free("after preemption");
}

TEST_P(SchedulerTp, CancellationFreesTheBlocksOnEveryRank) {
  TpScheduler s(GetParam(), 64, 256);
  // From the callback: false on the 3rd token.
  SequenceRequest cut = s.greedy("In the beginning", 50);
  int seen = 0;
  cut.on_token = [&](int32_t, std::string_view) { return ++seen < 3; };
  const Result r = wait(s.scheduler->submit(cut));
  EXPECT_EQ(r.finish, FinishReason::cancelled);
  EXPECT_EQ(r.token_ids.size(), 3u);
  s.expect_all_blocks_free("cancelled from the callback");

  // From another thread while running, beside a request that finishes; and right after submitting.
  std::latch first_token(1);
  std::atomic<int> tokens{0};
  SequenceRequest long_one = s.greedy("In the beginning", 50);
  long_one.on_token = [&](int32_t, std::string_view) {
    if (tokens++ == 0) first_token.count_down();
    return true;
  };
  const auto running = s.scheduler->submit(long_one);
  const auto other = s.scheduler->submit(s.greedy("And God said", 20));
  first_token.wait();
  RequestHandle(running).cancel();
  const auto queued = s.scheduler->submit(s.greedy("And God said", 20));
  RequestHandle(queued).cancel();
  EXPECT_EQ(wait(running).finish, FinishReason::cancelled);
  EXPECT_EQ(wait(queued).finish, FinishReason::cancelled);
  const Result finished = wait(other);
  EXPECT_EQ(finished.token_ids, reference(GetParam()).generate(s.greedy("And God said", 20).prompt, {.temperature = 0.f},
                                                               20, true));
  s.expect_all_blocks_free("cancelled from another thread");
}

// A rank that throws aborts the group (as a failing step does): the runner fails every later step
// with that error, so requests end with it instead of waiting, and give their blocks back.
TEST_P(SchedulerTp, AFailedRankFailsTheRequestsWithItsError) {
  TpScheduler s(GetParam(), 64, 256);
  EXPECT_NE(error_of([&] {
              s.runtime.run_on_ranks([](TensorParallelRuntime::Rank& r) {
                if (r.local == 1) throw Error("injected rank failure");
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

INSTANTIATE_TEST_SUITE_P(Models, SchedulerTp,
                         ::testing::Values(kDemoTp2, TpCase{"qwen3_moe_mxfp8_tp4", golden_dir("qwen3_moe"), "mxfp8", 4}),
                         [](const ::testing::TestParamInfo<TpCase>& p) { return p.param.name; });

TEST(EngineTpOptions, BadTensorParallelSizeIsAnError) {
  EngineOptions options = demo_engine_options(Device::cpu);
  options.tensor_parallel_size = 3;  // 4 heads
  const std::string error = error_of([&] { Engine e(options); });
  EXPECT_NE(error.find("num_attention_heads 4 is not divisible by the tensor parallel size 3"), std::string::npos)
      << error;
  options.tensor_parallel_size = 0;
  EXPECT_NE(error_of([&] { Engine e(options); }).find("tensor_parallel_size must be >= 1"), std::string::npos);
  options.tensor_parallel_size = 8;  // 2 KV heads would do, 4 query heads do not
  EXPECT_NE(error_of([&] { Engine e(options); }).find("not divisible by the tensor parallel size 8"),
            std::string::npos);
}

}  // namespace
