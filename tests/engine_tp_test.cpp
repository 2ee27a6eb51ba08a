// The Engine and its scheduler under tensor parallelism on the CPU backend, with simulated ranks
// (engine/cpu_communicator.h). The demo model (4 query heads, 2 KV heads; its expert width 192
// allows tp = 2 only) runs through the Engine and the scheduler; the golden Qwen3-MoE of
// tests/data/models (no tokenizer of its own: the demo's decodes its ids, all < 256) through the
// scheduler at tp = 4, where its 2 KV heads are replicated. Concurrent requests equal
// TensorParallelRuntime::generate at the same tp run alone, token for token (the same numerics:
// the CPU backend's rows do not depend on the batch); preemption under a small KV pool and
// cancellation leave every rank's pool full; a failing rank fails the requests with its error and
// nothing hangs; a bad tp is an Error from the constructor. engine_tp_gpu_test.cu runs the same
// checks over NCCL.
#include "engine_tp_util.h"

using namespace mxmoe;
using namespace mxmoe::testing;

namespace {

const TpCase kDemoTp2{"demo_tp2", demo_model_dir(), demo_quantization(Device::cpu), 2};

TEST(EngineTp, ConcurrentRequestsMatchTheRuntimeAlone) {
  EngineOptions options = demo_engine_options(Device::cpu);
  options.tensor_parallel_size = kDemoTp2.tp;
  Engine engine(options);
  check_concurrent_requests(engine, tp_reference(kDemoTp2), 0, 3);
}

class SchedulerTp : public ::testing::TestWithParam<TpCase> {};

TEST_P(SchedulerTp, SmallKvPoolPreemptsOnEveryRankAndStillMatches) { check_preemption_on_every_rank(GetParam(), 0); }

TEST_P(SchedulerTp, CancellationFreesTheBlocksOnEveryRank) { check_cancellation_on_every_rank(GetParam(), 0); }

TEST_P(SchedulerTp, AFailedRankFailsTheRequestsWithItsError) { check_failed_rank_fails_requests(GetParam()); }

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
