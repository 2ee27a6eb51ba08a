// The embeddable Engine on the GPU (demo model, MXFP8): each request's tokens equal
// Generator::generate alone, sequentially and with 32 requests from 8 threads batched together.
// Batched kernels may round differently from a batch of one, so greedy tokens may part only at a
// near-tie (kTieMargin), as in the golden tests.
#include "engine_test_util.h"

using namespace mxmoe;
using namespace mxmoe::testing;

namespace {

constexpr double kTieMargin = 0.25;  // logits

}  // namespace

TEST(EngineGpu, GreedyMatchesGeneratorAlone) {
  MXMOE_REQUIRE_GPU();
  Engine engine(demo_engine_options(Device::cuda));
  AloneReference ref(Device::cuda);
  for (const std::string& prompt : demo_prompts(4)) {
    Request request;
    request.prompt = prompt;
    request.max_new_tokens = 24;
    request.sampling.temperature = 0.f;
    const Result r = engine.generate(request);
    ASSERT_NE(r.finish, FinishReason::error) << r.error;
    const std::vector<int32_t> ids = engine.prompt_ids(request);
    expect_same_tokens(ref, ids, r.token_ids, ref.generate(ids, request.sampling, 24), kTieMargin, prompt.substr(0, 40));
  }
  const EngineStats s = engine.stats();
  EXPECT_EQ(s.kv_free_blocks, s.kv_blocks);
}

TEST(EngineGpu, ConcurrentRequestsAreBatchedAndMatchAlone) {
  MXMOE_REQUIRE_GPU();
  Engine engine(demo_engine_options(Device::cuda));
  AloneReference ref(Device::cuda);
  check_concurrent_requests(engine, ref, kTieMargin);
}

TEST(EngineGpu, SmallKvPoolPreemptsAndCompletes) {
  MXMOE_REQUIRE_GPU();
  EngineOptions options = demo_engine_options(Device::cuda);
  options.max_model_len = 128;
  options.kv_cache_blocks = 8;
  Engine engine(options);
  AloneReference ref(Device::cuda);
  std::vector<Request> requests;
  std::vector<RequestHandle> handles;
  for (const std::string& prompt : demo_prompts(8)) {
    Request r;
    r.prompt = prompt;
    r.max_new_tokens = 24;
    r.sampling.temperature = 0.f;
    r.ignore_eos = true;
    if (int64_t(engine.prompt_ids(r).size()) + r.max_new_tokens > options.max_model_len) continue;
    requests.push_back(r);
    handles.push_back(engine.submit(r));
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    const Result r = handles[i].wait();
    ASSERT_EQ(r.finish, FinishReason::length) << r.error;
    const std::vector<int32_t> ids = engine.prompt_ids(requests[i]);
    expect_same_tokens(ref, ids, r.token_ids, ref.generate(ids, requests[i].sampling, 24, true), kTieMargin,
                       "request " + std::to_string(i));
  }
  const EngineStats s = engine.stats();
  std::printf("[engine] small pool: %lld preemptions\n", (long long)s.preemptions);
  EXPECT_GT(s.preemptions, 0);
  EXPECT_EQ(s.kv_free_blocks, s.kv_blocks);
}
