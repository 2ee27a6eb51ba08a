// Whole models on the GPU vs Hugging Face transformers (tests/model_golden.h).
#include "model_golden.h"

using namespace mxmoe;
using namespace mxmoe::testing;

class ModelGoldenGpu : public ::testing::TestWithParam<std::string> {};

TEST_P(ModelGoldenGpu, Bf16LogitsMatchTransformers) {
  MXMOE_REQUIRE_GPU();
  check_logits(GetParam(), "bf16", Device::cuda);
}
TEST_P(ModelGoldenGpu, Mxfp8LogitsMatchTransformersOnDequantizedWeights) {
  MXMOE_REQUIRE_GPU();
  check_logits(GetParam(), "mxfp8", Device::cuda);
}
TEST_P(ModelGoldenGpu, GreedyContinuationMatches) {
  MXMOE_REQUIRE_GPU();
  check_greedy(GetParam(), Device::cuda);
}
TEST_P(ModelGoldenGpu, BatchingAndDecodeAgreeWithPrefill) {
  MXMOE_REQUIRE_GPU();
  check_batching(GetParam(), Device::cuda);
}

INSTANTIATE_TEST_SUITE_P(Architectures, ModelGoldenGpu, ::testing::ValuesIn(kGoldenArchs));
