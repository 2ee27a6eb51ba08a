// Whole models on the CPU reference backend vs Hugging Face transformers (tests/model_golden.h).
#include "model_golden.h"

using namespace mxmoe;
using namespace mxmoe::testing;

class ModelGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(ModelGolden, Bf16LogitsMatchTransformers) { check_logits(GetParam(), "bf16", Device::cpu); }
TEST_P(ModelGolden, Mxfp8LogitsMatchTransformersOnDequantizedWeights) { check_logits(GetParam(), "mxfp8", Device::cpu); }
TEST_P(ModelGolden, GreedyContinuationMatches) { check_greedy(GetParam(), Device::cpu); }
TEST_P(ModelGolden, BatchingAndDecodeAgreeWithPrefill) { check_batching(GetParam(), Device::cpu); }

INSTANTIATE_TEST_SUITE_P(Architectures, ModelGolden, ::testing::ValuesIn(kGoldenArchs));
