// CPU router reference: a hand-computed case, ties, NaN, bad arguments, and random logits against
// an independent formulation (stable sort of the indices + softmax in double).
#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/error.h"
#include "kernels/moe_routing.h"
#include "tests/moe_test_util.h"

namespace mxmoe {
namespace {

struct Routed {
  std::vector<int32_t> ids;
  std::vector<float> weights;
};

Routed route(const Tensor& logits, int k, bool renormalize) {
  const int64_t t = logits.size(0);
  Tensor ids = Tensor::empty({t, k}, DType::i32, Device::cpu);
  Tensor w = Tensor::empty({t, k}, DType::f32, Device::cpu);
  moe_route_ref(logits, k, renormalize, ids, w);
  return {std::vector<int32_t>(ids.data_as<int32_t>(), ids.data_as<int32_t>() + t * k), to_f32_vector(w)};
}

TEST(MoeRouting, HandComputed) {
  Tensor logits = Tensor::empty({1, 4}, DType::f32, Device::cpu);
  const float l[4] = {0.f, 2.f, 1.f, 2.f};  // experts 1 and 3 tie: 1 first
  std::copy(l, l + 4, logits.data_as<float>());
  const double z = 1 + 2 * std::exp(2.0) + std::exp(1.0);
  Routed r = route(logits, 2, false);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{1, 3}));
  EXPECT_NEAR(r.weights[0], std::exp(2.0) / z, 1e-6);
  EXPECT_NEAR(r.weights[1], std::exp(2.0) / z, 1e-6);
  r = route(logits, 3, true);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{1, 3, 2}));
  const double sel = 2 * std::exp(2.0) + std::exp(1.0);
  EXPECT_NEAR(r.weights[0], std::exp(2.0) / sel, 1e-6);
  EXPECT_NEAR(r.weights[2], std::exp(1.0) / sel, 1e-6);
}

TEST(MoeRouting, AllEqualPicksLowestIndices) {
  Tensor logits = Tensor::empty({3, 8}, DType::f32, Device::cpu);
  std::fill(logits.data_as<float>(), logits.data_as<float>() + 24, 0.5f);
  const Routed r = route(logits, 3, false);
  for (int t = 0; t < 3; ++t)
    for (int k = 0; k < 3; ++k) {
      EXPECT_EQ(r.ids[size_t(t * 3 + k)], k);
      EXPECT_NEAR(r.weights[size_t(t * 3 + k)], 1.0 / 8, 1e-6);
    }
}

TEST(MoeRouting, NanStillGivesValidDistinctIds) {
  Tensor logits = Tensor::empty({1, 6}, DType::f32, Device::cpu);
  const float l[6] = {1.f, NAN, 3.f, NAN, 2.f, 0.f};
  std::copy(l, l + 6, logits.data_as<float>());
  const Routed r = route(logits, 6, true);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{2, 4, 0, 5, 1, 3}));  // NaN ranks as -inf
  EXPECT_TRUE(std::isnan(r.weights[0]));
}

TEST(MoeRouting, MatchesStableSortAndDoubleSoftmax) {
  std::mt19937_64 rng(testing::fresh_seed());
  for (auto [t, e, k] : {std::tuple{7, 8, 2}, {13, 128, 8}, {5, 60, 4}})
    for (testing::Load load : {testing::Load::random, testing::Load::ties, testing::Load::one_takes_all})
      for (bool renorm : {false, true}) {
        SCOPED_TRACE(cat("T=", t, " E=", e, " k=", k, " load=", load, " renormalize=", renorm));
        const Tensor logits = testing::moe_logits(t, e, k, load, rng);
        const Routed r = route(logits, k, renorm);
        for (int i = 0; i < t; ++i) {
          const float* l = logits.data_as<const float>() + i * e;
          std::vector<int32_t> order(static_cast<size_t>(e));
          std::iota(order.begin(), order.end(), 0);
          std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return l[a] > l[b]; });
          double z = 0, sel = 0;
          for (int j = 0; j < e; ++j) z += std::exp(double(l[j]));
          for (int j = 0; j < k; ++j) sel += std::exp(double(l[order[size_t(j)]])) / z;
          for (int j = 0; j < k; ++j) {
            ASSERT_EQ(r.ids[size_t(i * k + j)], order[size_t(j)]) << "token " << i << " slot " << j;
            const double p = std::exp(double(l[order[size_t(j)]])) / z;
            EXPECT_NEAR(r.weights[size_t(i * k + j)], renorm ? p / sel : p, 1e-6);
          }
        }
      }
}

TEST(MoeRouting, BadArgumentsThrow) {
  Tensor logits = Tensor::empty({2, 4}, DType::f32, Device::cpu);
  Tensor ids = Tensor::empty({2, 5}, DType::i32, Device::cpu);
  Tensor w = Tensor::empty({2, 5}, DType::f32, Device::cpu);
  EXPECT_THROW(moe_route_ref(logits, 5, true, ids, w), Error);  // top_k > E
  Tensor ids2 = Tensor::empty({2, 2}, DType::i32, Device::cpu);
  EXPECT_THROW(moe_route_ref(logits, 2, true, ids2, w), Error);  // weights of the wrong size
  Tensor bf = Tensor::empty({2, 4}, DType::bf16, Device::cpu);
  Tensor w2 = Tensor::empty({2, 2}, DType::f32, Device::cpu);
  EXPECT_THROW(moe_route_ref(bf, 2, true, ids2, w2), Error);  // logits not f32
}

}  // namespace
}  // namespace mxmoe
