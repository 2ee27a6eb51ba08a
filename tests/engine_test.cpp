// The embeddable Engine on the CPU backend (demo model): results equal Generator::generate alone,
// concurrent requests are batched, cancellation, preemption under a small KV pool, bad requests,
// stop strings, a failing step, shutdown with requests pending.
#include <atomic>
#include <latch>

#include "engine_test_util.h"

using namespace mxmoe;
using namespace mxmoe::testing;

namespace {

AloneReference& reference() {
  static AloneReference ref(Device::cpu);
  return ref;
}

Request greedy(const std::string& prompt, int max_new_tokens) {
  Request r;
  r.prompt = prompt;
  r.max_new_tokens = max_new_tokens;
  r.sampling.temperature = 0.f;
  return r;
}

}  // namespace

TEST(Engine, GreedyMatchesGeneratorAlone) {
  Engine engine(demo_engine_options(Device::cpu));
  for (const std::string& prompt : demo_prompts(4)) {
    const Request request = greedy(prompt, 24);
    const Result r = engine.generate(request);
    const std::vector<int32_t> ids = engine.prompt_ids(request);
    EXPECT_EQ(r.token_ids, reference().generate(ids, request.sampling, 24)) << prompt;
    EXPECT_EQ(r.prompt_tokens, int64_t(ids.size()));
    EXPECT_EQ(r.text, engine.tokenizer().decode(r.token_ids, true));
    EXPECT_EQ(r.finish, r.token_ids.size() == 24 ? FinishReason::length : FinishReason::stop);
  }
}

TEST(Engine, ConcurrentRequestsAreBatchedAndMatchAlone) {
  Engine engine(demo_engine_options(Device::cpu));
  check_concurrent_requests(engine, reference(), 0);
}

TEST(Engine, StreamedTextIsTheResultText) {
  Engine engine(demo_engine_options(Device::cpu));
  std::string streamed;
  std::vector<int32_t> tokens;
  const Result r = engine.generate(greedy("And it came to pass", 40), [&](int32_t token, std::string_view text) {
    tokens.push_back(token);
    streamed += text;
    return true;
  });
  EXPECT_EQ(tokens, r.token_ids);
  EXPECT_EQ(streamed, r.text);
  EXPECT_FALSE(r.text.empty());
}

TEST(Engine, StopStrings) {
  Engine engine(demo_engine_options(Device::cpu));
  Request request = greedy("And it came to pass", 40);
  request.ignore_eos = true;
  const Result full = engine.generate(request);
  ASSERT_GT(full.text.size(), 20u);
  // A stop string from the middle of the full completion: the text ends right before its first occurrence.
  const std::string stop = full.text.substr(full.text.size() / 2, 5);
  request.stop = {"a string that never comes", stop};
  std::string streamed;
  const Result r = engine.generate(request, [&](int32_t, std::string_view text) {
    streamed += text;
    return true;
  });
  EXPECT_EQ(r.finish, FinishReason::stop);
  EXPECT_EQ(r.text, full.text.substr(0, full.text.find(stop)));
  EXPECT_EQ(streamed, r.text);  // the stop string was never streamed
  ASSERT_LE(r.token_ids.size(), full.token_ids.size());
  EXPECT_TRUE(std::equal(r.token_ids.begin(), r.token_ids.end(), full.token_ids.begin()));

  // A stop id ends it with that token; its text is not added.
  request.stop = {};
  request.stop_ids = {full.token_ids[5]};
  const Result by_id = engine.generate(request);
  EXPECT_EQ(by_id.finish, FinishReason::stop);
  ASSERT_GE(by_id.token_ids.size(), 1u);
  EXPECT_EQ(by_id.token_ids.back(), full.token_ids[5]);
}

TEST(Engine, CancellationFreesTheBlocks) {
  Engine engine(demo_engine_options(Device::cpu));
  // From the callback: it returns false on the 3rd token.
  int seen = 0;
  Request request = greedy("In the beginning", 50);
  request.ignore_eos = true;
  const Result cut = engine.generate(request, [&](int32_t, std::string_view) { return ++seen < 3; });
  EXPECT_EQ(cut.finish, FinishReason::cancelled);
  EXPECT_EQ(cut.token_ids.size(), 3u);

  // From another thread, while a second request keeps running.
  std::latch first_token(1);
  std::atomic<int> tokens{0};
  const RequestHandle long_one = engine.submit(request, [&](int32_t, std::string_view) {
    if (tokens++ == 0) first_token.count_down();
    return true;
  });
  const RequestHandle other = engine.submit(greedy("And God said", 30));
  std::thread canceller([&] {
    first_token.wait();
    long_one.cancel();
  });
  const Result cancelled = long_one.wait();
  canceller.join();
  EXPECT_EQ(cancelled.finish, FinishReason::cancelled);
  EXPECT_LT(cancelled.token_ids.size(), 50u);
  const Result finished = other.wait();
  EXPECT_NE(finished.finish, FinishReason::cancelled);
  EXPECT_EQ(finished.token_ids, reference().generate(engine.prompt_ids(greedy("And God said", 30)), {.temperature = 0.f}, 30));

  // Cancelled while still queued: it never runs.
  const RequestHandle queued = engine.submit(request);
  queued.cancel();
  EXPECT_EQ(queued.wait().finish, FinishReason::cancelled);
  const EngineStats s = engine.stats();
  EXPECT_EQ(s.kv_free_blocks, s.kv_blocks);
}

TEST(Engine, SmallKvPoolPreemptsAndStillMatches) {
  EngineOptions options = demo_engine_options(Device::cpu);
  options.max_model_len = 128;
  options.kv_cache_blocks = 8;  // 128 tokens for 8 sequences of up to ~110
  Engine engine(options);
  const std::vector<std::string> prompts = demo_prompts(8);
  std::vector<Request> requests;
  std::vector<RequestHandle> handles;
  for (size_t i = 0; i < prompts.size(); ++i) {
    Request r = greedy(prompts[i], 24 + int(i) * 2);
    r.ignore_eos = true;
    if (int64_t(engine.prompt_ids(r).size()) + r.max_new_tokens > options.max_model_len) continue;
    requests.push_back(r);
    handles.push_back(engine.submit(r));
  }
  ASSERT_GE(requests.size(), 6u);
  int preempted = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    const Result r = handles[i].wait();
    ASSERT_EQ(r.finish, FinishReason::length) << r.error;
    EXPECT_EQ(r.token_ids, reference().generate(engine.prompt_ids(requests[i]), requests[i].sampling,
                                                requests[i].max_new_tokens, true))
        << "request " << i << " (preempted " << r.preemptions << " times)";
    preempted += r.preemptions > 0;
  }
  const EngineStats s = engine.stats();
  EXPECT_GT(s.preemptions, 0);
  EXPECT_GT(preempted, 0);
  EXPECT_EQ(s.kv_free_blocks, s.kv_blocks);
}

TEST(Engine, LongPromptsArePrefilledInChunks) {
  EngineOptions options = demo_engine_options(Device::cpu);
  options.max_step_tokens = 16;
  Engine engine(options);
  const std::vector<std::string> prompts = demo_prompts(5);
  for (const std::string& prompt : {prompts[2], prompts[4]}) {
    const Request request = greedy(prompt, 8);
    ASSERT_GT(engine.prompt_ids(request).size(), 16u);
    EXPECT_EQ(engine.generate(request).token_ids, reference().generate(engine.prompt_ids(request), request.sampling, 8));
  }
}

TEST(Engine, BadRequestsAreErrorsBeforeAnythingRuns) {
  Engine engine(demo_engine_options(Device::cpu));
  const auto error_for = [&](const Request& r) { return error_of([&] { engine.submit(r); }); };
  Request r = greedy("", 4);
  EXPECT_NE(error_for(r).find("exactly one of prompt"), std::string::npos);
  r.prompt = "x";
  r.prompt_ids = {1, 2};
  EXPECT_NE(error_for(r).find("exactly one of prompt"), std::string::npos);
  r.prompt = "";
  r.prompt_ids = {1, 99999};
  EXPECT_NE(error_for(r).find("99999"), std::string::npos);
  r.prompt_ids = std::vector<int32_t>(256, 5);
  EXPECT_NE(error_for(r).find("max_model_len 256"), std::string::npos);
  r.prompt_ids = {1, 2};
  r.sampling.temperature = -1.f;
  EXPECT_NE(error_for(r).find("temperature"), std::string::npos);
  r.sampling = {};
  r.sampling.top_p = 0.f;
  EXPECT_NE(error_for(r).find("top_p"), std::string::npos);
  r.sampling = {};
  r.max_new_tokens = -1;
  EXPECT_NE(error_for(r).find("max_new_tokens"), std::string::npos);
  r.max_new_tokens = 4;
  r.stop = {""};
  EXPECT_NE(error_for(r).find("stop string is empty"), std::string::npos);
  r.stop = {};
  r.prompt_ids = {};
  r.messages = {{"user", "hello"}};  // the demo model has no chat template
  EXPECT_NE(error_for(r).find("chat_template"), std::string::npos) << error_for(r);
  EXPECT_EQ(engine.stats().steps, 0);  // nothing ran

  r.messages = {};
  r.prompt_ids = {1, 2};
  EXPECT_EQ(engine.generate(r).token_ids.size(), 4u);  // still usable
  r.max_new_tokens = 0;
  EXPECT_TRUE(engine.generate(r).token_ids.empty());

  EngineOptions options = demo_engine_options(Device::cpu);
  options.quantization = "int4";
  EXPECT_NE(error_of([&] { Engine e(options); }).find("int4"), std::string::npos);
  options = demo_engine_options(Device::cpu);
  options.kv_cache_blocks = 4;  // 64 tokens < max_model_len 256
  EXPECT_NE(error_of([&] { Engine e(options); }).find("fewer than max_model_len"), std::string::npos);
}

TEST(Engine, ShutdownWithRequestsPendingDoesNotHang) {
  std::vector<RequestHandle> handles;
  {
    Engine engine(demo_engine_options(Device::cpu));
    for (const std::string& prompt : demo_prompts(16)) {
      Request r = greedy(prompt, 100);
      r.ignore_eos = true;
      handles.push_back(engine.submit(r));
    }
  }
  for (const RequestHandle& h : handles) {
    const Result r = h.wait();
    EXPECT_TRUE(r.finish == FinishReason::cancelled || r.finish == FinishReason::length);
  }
}

// A step that throws fails the requests in it, with its message; the scheduler goes on.
TEST(Scheduler, AFailingStepFailsOnlyItsRequests) {
  ModelLoadOptions load;
  load.dir = demo_model_dir();
  load.device = Device::cpu;
  load.quant.scheme = demo_quantization(Device::cpu);
  load.quiet = true;
  LoadedModel m = load_model(load);
  KvCacheConfig kv = m.model->kv_cache_config();
  kv.num_blocks = 64;
  KvCache cache(kv, Device::cpu);
  Generator generator(*m.model, cache);
  // The Generator's runner, whose next step throws on request.
  class FailingRunner final : public ModelRunner {
   public:
    explicit FailingRunner(Generator& generator) : inner_(generator) {}
    Tensor step(std::span<const int> seqs, const std::vector<std::vector<int32_t>>& tokens,
                const std::vector<int32_t>& rows) override {
      ++calls;
      if (fail_next.exchange(false)) throw Error("injected step failure");
      return inner_.step(seqs, tokens, rows);
    }
    int add_sequence() override { return inner_.add_sequence(); }
    void free_sequence(int seq) override { inner_.free_sequence(seq); }
    const KvCache& cache() const override { return inner_.cache(); }
    cudaStream_t stream() const override { return inner_.stream(); }
    void make_current() const override { inner_.make_current(); }
    std::atomic<int> calls{0};
    std::atomic<bool> fail_next{false};

   private:
    GeneratorRunner inner_;
  } runner(generator);
  std::atomic<int>& calls = runner.calls;
  std::atomic<bool>& fail_next = runner.fail_next;
  SchedulerOptions options;
  options.max_model_len = 256;
  options.vocab_size = m.config.vocab_size;
  Scheduler scheduler(runner, *m.tokenizer, options);
  SequenceRequest request;
  request.prompt = m.tokenizer->encode("And the LORD spake unto Moses", true);
  request.sampling.temperature = 0.f;
  request.max_new_tokens = 6;
  fail_next = true;
  const auto failed = scheduler.submit(request);
  {
    std::unique_lock lock(failed->mutex);
    failed->finished.wait(lock, [&] { return failed->done; });
  }
  EXPECT_EQ(failed->result.finish, FinishReason::error);
  EXPECT_EQ(failed->result.error, "injected step failure");
  const auto ok = scheduler.submit(request);
  {
    std::unique_lock lock(ok->mutex);
    ok->finished.wait(lock, [&] { return ok->done; });
  }
  EXPECT_EQ(ok->result.finish, FinishReason::length);
  EXPECT_EQ(ok->result.token_ids, reference().generate(request.prompt, {.temperature = 0.f}, 6, true));
  EXPECT_EQ(scheduler.stats().kv_free_blocks, cache.num_blocks());
  EXPECT_GE(calls.load(), 7);
}
