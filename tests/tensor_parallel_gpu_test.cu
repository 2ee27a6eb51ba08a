// Tensor parallelism over NCCL (engine/tensor_parallel.h, engine/nccl_communicator.h). On one GPU a
// world of one rank still runs every collective through NCCL (identities) and must equal the run
// without a communicator bit for bit, CUDA-graph decode steps included; with two GPUs, tp = 2 is
// held to tp = 1 as the CPU test holds its simulated ranks (tests/model_golden_tp.h).
#include "model_golden_tp.h"

using namespace mxmoe;
using namespace mxmoe::testing;

namespace {

class TensorParallelGpu : public ::testing::TestWithParam<std::string> {};

TEST_P(TensorParallelGpu, NcclWorldOfOneEqualsNoCommunicator) {
  MXMOE_REQUIRE_GPU();
  const std::string arch = GetParam();
  GoldenModel ref = load_golden(arch, "mxfp8", Device::cuda);
  TensorParallelOptions o = golden_tp_options(arch, "mxfp8", 1, Device::cuda);
  o.communicator_for_one_rank = true;
  TensorParallelRuntime rt(o);
  ASSERT_NE(rt.rank(0).comm, nullptr);
  for (const auto& p : ref.goldens["prompts"]) {
    const auto ids = p["ids"].get<std::vector<int32_t>>();
    const Tensor got = tp_prefill_logits(rt, ids)[0], want = prefill_logits(ref, ids);
    std::printf("[tp-gpu] %-9s NCCL world of 1, %2zu tokens: rel error vs no communicator %.2e\n", arch.c_str(),
                ids.size(), rel_error(got, want));
    EXPECT_EQ(std::memcmp(got.data(), want.data(), want.nbytes()), 0) << arch;

    GenerationOptions greedy;
    greedy.sampling.temperature = 0.f;
    greedy.max_new_tokens = 8;
    EXPECT_EQ(rt.generate({ids}, greedy)[0].tokens, ref.generator->generate({ids}, greedy)[0].tokens) << arch;
  }
  EXPECT_GT(rt.stats().graph_replays, 0) << "decode steps with NCCL collectives were not replayed as CUDA graphs";
}

TEST_P(TensorParallelGpu, TwoGpusMatchOne) {
  MXMOE_REQUIRE_GPU();
  const std::string arch = GetParam();
  if (cuda_device_count() < 2) {
    try {  // the runtime refuses in one clear line
      TensorParallelRuntime rt(golden_tp_options(arch, "mxfp8", 2, Device::cuda));
      ADD_FAILURE() << "tp = 2 on " << cuda_device_count() << " GPU(s) did not fail";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("over 2 GPUs per process, but 1 GPU(s) are visible"), std::string::npos)
          << e.what();
    }
    GTEST_SKIP() << "tp = 2 needs 2 GPUs; " << cuda_device_count() << " visible";
  }
  for (const char* scheme : {"bf16", "mxfp8"}) {
    GoldenModel ref = load_golden(arch, scheme, Device::cuda);
    TensorParallelRuntime rt(golden_tp_options(arch, scheme, 2, Device::cuda));
    check_tp_matches_one_rank(rt, ref, arch + " " + scheme + " NCCL tp=2");
  }
}

INSTANTIATE_TEST_SUITE_P(GoldenModels, TensorParallelGpu, ::testing::ValuesIn(kGoldenArchs));

}  // namespace
