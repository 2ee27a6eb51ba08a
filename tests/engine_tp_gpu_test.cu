// The Engine's tensor-parallel runner and scheduler over NCCL (engine_tp_util.h; the CPU test
// engine_tp_test.cpp runs the same checks on simulated ranks). On one GPU the demo model runs at
// tp = 1 with an NCCL communicator of one rank: every step goes through TensorParallelRunner and its
// collectives. tp = 2 needs two GPUs and skips otherwise. GPU batches round differently from a
// batch of one, so tokens may part at a near-tie (kTieMargin logits), as in engine_gpu_test.
#include "engine_tp_util.h"

using namespace mxmoe;
using namespace mxmoe::testing;

namespace {

constexpr double kTieMargin = 0.25;

const TpCase kDemoTp1Nccl{"demo_tp1_nccl", demo_model_dir(), "mxfp8", 1, Device::cuda};
const TpCase kDemoTp2Nccl{"demo_tp2_nccl", demo_model_dir(), "mxfp8", 2, Device::cuda};

// A fixture that frees the cached references after its suite, while CUDA and NCCL are still up.
template <class Base>
class ClearsTpReferences : public Base {
 public:
  static void TearDownTestSuite() { tp_references().clear(); }
};

class EngineTpGpu : public ClearsTpReferences<::testing::Test> {};

TEST_F(EngineTpGpu, TwoGpusConcurrentRequestsMatchTheRuntimeAlone) {
  MXMOE_REQUIRE_GPUS(2);
  EngineOptions options = demo_engine_options(Device::cuda);
  options.tensor_parallel_size = 2;
  Engine engine(options);
  check_concurrent_requests(engine, tp_reference(kDemoTp2Nccl), kTieMargin);
}

class SchedulerTpGpu : public ClearsTpReferences<::testing::TestWithParam<TpCase>> {};

TEST_P(SchedulerTpGpu, SmallKvPoolPreemptsOnEveryRankAndStillMatches) {
  MXMOE_REQUIRE_GPUS(GetParam().tp);
  check_preemption_on_every_rank(GetParam(), kTieMargin);
}

TEST_P(SchedulerTpGpu, CancellationFreesTheBlocksOnEveryRank) {
  MXMOE_REQUIRE_GPUS(GetParam().tp);
  check_cancellation_on_every_rank(GetParam(), kTieMargin);
}

TEST_P(SchedulerTpGpu, AFailedRankFailsTheRequestsWithItsError) {
  MXMOE_REQUIRE_GPUS(GetParam().tp);
  check_failed_rank_fails_requests(GetParam());
}

INSTANTIATE_TEST_SUITE_P(Demo, SchedulerTpGpu, ::testing::Values(kDemoTp1Nccl, kDemoTp2Nccl),
                         [](const ::testing::TestParamInfo<TpCase>& p) { return p.param.name; });

}  // namespace
