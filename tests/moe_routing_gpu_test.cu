// GPU router and permutation kernels against the CPU reference / exact expectations: routing ids
// exact and weights within kWeightTol; the permutation equal to a stable sort by expert with all its
// invariants; gather, SiLU·up and combine against plain CPU loops. Outputs are poisoned first.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "engine/cuda_check.h"
#include "engine/error.h"
#include "engine/numerics.h"
#include "kernels/moe_permute.h"
#include "kernels/moe_routing.h"
#include "kernels/rmsnorm.h"
#include "tests/moe_test_util.h"

namespace mxmoe {
namespace {

// Routing weights (fp32, <= 1): the GPU's softmax over up to 128 logits may differ from the
// host's in a few tens of ulp (1.37e-6 seen at 0.8929, T=16, E=128); 4e-6 is ~60 ulp at 1.
constexpr double kWeightTol = 4e-6;

using testing::Load;

void poison(const Tensor& t) { CUDA_CHECK(cudaMemset(t.data(), 0xff, t.nbytes())); }

std::vector<int32_t> ints(const Tensor& t) {
  const Tensor c = t.to(Device::cpu);
  return std::vector<int32_t>(c.data_as<int32_t>(), c.data_as<int32_t>() + c.numel());
}

TEST(MoeRoutingGpu, MatchesReference) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(testing::fresh_seed());
  for (auto [t, e, k] : {std::tuple{1, 8, 2}, {7, 128, 8}, {64, 60, 4}, {4096, 128, 8}, {33, 1024, 32}, {5, 3, 3}})
    for (Load load : {Load::random, Load::ties, Load::half_idle, Load::one_takes_all})
      for (bool renorm : {false, true}) {
        SCOPED_TRACE(cat("T=", t, " E=", e, " k=", k, " load=", load, " renormalize=", renorm));
        const Tensor logits = testing::moe_logits(t, e, k, load, rng);
        Tensor ids = Tensor::empty({t, k}, DType::i32, Device::cpu), w = Tensor::empty({t, k}, DType::f32, Device::cpu);
        moe_route_ref(logits, k, renorm, ids, w);
        Tensor d_ids = Tensor::empty({t, k}, DType::i32, Device::cuda);
        Tensor d_w = Tensor::empty({t, k}, DType::f32, Device::cuda);
        poison(d_ids);
        poison(d_w);
        moe_route(logits.to(Device::cuda), k, renorm, d_ids, d_w, nullptr);
        ASSERT_EQ(ints(d_ids), ints(ids));
        const std::vector<float> got = to_f32_vector(d_w.to(Device::cpu)), want = to_f32_vector(w);
        for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], kWeightTol) << "pair " << i;
      }
}

TEST(MoeRoutingGpu, NanLogitsGiveValidIds) {
  MXMOE_REQUIRE_GPU();
  Tensor logits = Tensor::empty({1, 40}, DType::f32, Device::cpu);
  std::fill(logits.data_as<float>(), logits.data_as<float>() + 40, NAN);
  logits.data_as<float>()[37] = 1.f;
  Tensor ids = Tensor::empty({1, 4}, DType::i32, Device::cuda), w = Tensor::empty({1, 4}, DType::f32, Device::cuda);
  moe_route(logits.to(Device::cuda), 4, true, ids, w, nullptr);
  EXPECT_EQ(ints(ids), (std::vector<int32_t>{37, 0, 1, 2}));
}

// A permutation `b` of `ids` (E experts) checked against a stable sort.
void check_permutation(const std::vector<int32_t>& ids, int64_t experts, const MoePermuteBuffers& b) {
  const int64_t n = int64_t(ids.size());
  std::vector<int32_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int c) { return ids[size_t(a)] < ids[size_t(c)]; });
  std::vector<int32_t> offsets(size_t(experts + 1), 0), active;
  for (int32_t e : ids) ++offsets[size_t(e + 1)];
  for (int64_t e = 0; e < experts; ++e) {
    if (offsets[size_t(e + 1)] > 0) active.push_back(int32_t(e));
    offsets[size_t(e + 1)] += offsets[size_t(e)];
  }
  const int n_active = int(active.size());
  active.resize(size_t(experts), -1);
  std::vector<int32_t> rows(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) rows[size_t(order[size_t(i)])] = int32_t(i);

  EXPECT_EQ(ints(b.perm.expert_offsets), offsets);
  EXPECT_EQ(ints(b.perm.sorted_pairs), order);
  EXPECT_EQ(ints(b.perm.active_experts), active);
  EXPECT_EQ(ints(b.perm.num_active), std::vector<int32_t>{n_active});
  EXPECT_EQ(ints(b.pair_rows), rows);
}

MoePermuteBuffers poisoned_buffers(int64_t n_pairs, int64_t experts) {
  MoePermuteBuffers b = moe_permute_buffers(n_pairs, experts);
  for (const Tensor* t : {&b.perm.expert_offsets, &b.perm.sorted_pairs, &b.perm.active_experts,
                          &b.perm.num_active, &b.pair_rows})
    poison(*t);
  return b;
}

// moe_permute of `ids` checked against a stable sort.
void check_permutation(const std::vector<int32_t>& ids, int64_t experts) {
  const int64_t n = int64_t(ids.size());
  MoePermuteBuffers b = poisoned_buffers(n, experts);
  Tensor d_ids = Tensor::empty({n}, DType::i32, Device::cpu);
  std::copy(ids.begin(), ids.end(), d_ids.data_as<int32_t>());
  moe_permute(d_ids.to(Device::cuda), b, nullptr);
  check_permutation(ids, experts, b);
}

TEST(MoePermuteGpu, StableSortByExpert) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(testing::fresh_seed());
  for (auto [t, e, k] : {std::tuple{1, 8, 2}, {7, 128, 8}, {64, 60, 4}, {4096, 128, 8}, {1000, 1024, 8}})
    for (Load load : {Load::random, Load::half_idle, Load::one_takes_all}) {
      SCOPED_TRACE(cat("T=", t, " E=", e, " k=", k, " load=", load));
      const Tensor logits = testing::moe_logits(t, e, k, load, rng);
      Tensor ids = Tensor::empty({t, k}, DType::i32, Device::cpu), w = Tensor::empty({t, k}, DType::f32, Device::cpu);
      moe_route_ref(logits, k, true, ids, w);
      check_permutation(std::vector<int32_t>(ids.data_as<int32_t>(), ids.data_as<int32_t>() + t * k), e);
    }
  // Every pair on one expert (k = 1), and on the last expert.
  check_permutation(std::vector<int32_t>(3000, 5), 8);
  check_permutation(std::vector<int32_t>(300, 127), 128);
}

// Router + permutation in one call: the single-block fused kernel (T·k <= 1024; ranked routing
// for small T·E²: T=1 E=8, 1x128, 128x8; warp routing beyond: 8x128, 9x128, 16x60, 33x1024) and
// the four launches beyond it give the reference routing and the stable-sort permutation.
TEST(MoePermuteGpu, RoutePermuteMatchesReference) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(testing::fresh_seed());
  for (auto [t, e, k] : {std::tuple{1, 8, 2}, {1, 128, 8}, {8, 128, 8}, {9, 128, 8}, {16, 60, 4}, {128, 8, 8},
                         {33, 1024, 32}, {129, 8, 8}, {4096, 128, 8}})
    for (Load load : {Load::random, Load::ties, Load::one_takes_all})
      for (bool renorm : {false, true}) {
        SCOPED_TRACE(cat("T=", t, " E=", e, " k=", k, " load=", load, " renormalize=", renorm));
        const Tensor logits = testing::moe_logits(t, e, k, load, rng);
        Tensor ids = Tensor::empty({t, k}, DType::i32, Device::cpu), w = Tensor::empty({t, k}, DType::f32, Device::cpu);
        moe_route_ref(logits, k, renorm, ids, w);
        Tensor d_ids = Tensor::empty({t * k}, DType::i32, Device::cuda), d_w = Tensor::empty({t * k}, DType::f32, Device::cuda);
        poison(d_ids);
        poison(d_w);
        MoePermuteBuffers b = poisoned_buffers(t * k, e);
        moe_route_permute(logits.to(Device::cuda), k, renorm, d_ids, d_w, b, nullptr);
        const std::vector<int32_t> want = ints(ids);
        ASSERT_EQ(ints(d_ids), want);
        const std::vector<float> got_w = to_f32_vector(d_w.to(Device::cpu)), want_w = to_f32_vector(w);
        for (size_t i = 0; i < got_w.size(); ++i) ASSERT_NEAR(got_w[i], want_w[i], kWeightTol) << "pair " << i;
        check_permutation(want, e, b);
      }
}

// NaN logits through the fused kernel's ranked routing: valid distinct ids (NaN ranks as -inf,
// ties by index), NaN weights, and a permutation of those ids.
TEST(MoePermuteGpu, RoutePermuteNanLogits) {
  MXMOE_REQUIRE_GPU();
  Tensor logits = Tensor::empty({2, 40}, DType::f32, Device::cpu);
  std::fill(logits.data_as<float>(), logits.data_as<float>() + 80, NAN);
  logits.data_as<float>()[37] = 1.f;
  logits.data_as<float>()[40 + 5] = 2.f;
  Tensor ids = Tensor::empty({8}, DType::i32, Device::cuda), w = Tensor::empty({8}, DType::f32, Device::cuda);
  MoePermuteBuffers b = poisoned_buffers(8, 40);
  moe_route_permute(logits.to(Device::cuda), 4, true, ids, w, b, nullptr);
  const std::vector<int32_t> want{37, 0, 1, 2, 5, 0, 1, 2};
  EXPECT_EQ(ints(ids), want);
  for (float v : to_f32_vector(w.to(Device::cpu))) EXPECT_TRUE(std::isnan(v));
  check_permutation(want, 40, b);
}

// The router GEMV fused in front of the routing (moe_router_route_permute): the logits within fp32
// summation error of a double-precision CPU dot product (rel error <= 1e-5), then ids, weights and
// permutation exactly as the reference routes those logits. Ties: router rows repeated (every
// 4th row equal), which the kernel must sum bit-identically so the lowest index wins. Shapes:
// Qwen3 (E=128 k=8, H=2048), Mixtral (E=8 k=2, H=4096), E=60 k=4, T = 1, 7, 16 (T=16 E=128: the
// routing in warp rounds; T·E = 4096, the largest staged), H = 8200 (past the prefetched passes),
// E=3 (a block with idle rows). Each case runs twice: the finished-block count must reset.
TEST(MoePermuteGpu, RouterRoutePermuteMatchesReference) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(testing::fresh_seed());
  for (auto [t, e, k, h] : {std::tuple{1, 128, 8, 2048}, {7, 128, 8, 2048}, {16, 128, 8, 2048}, {1, 8, 2, 4096},
                            {16, 8, 2, 4096}, {1, 60, 4, 256}, {7, 60, 4, 8200}, {16, 256, 8, 64}, {3, 3, 3, 64}})
    for (bool ties : {false, true})
      for (bool renorm : {false, true}) {
        SCOPED_TRACE(cat("T=", t, " E=", e, " k=", k, " H=", h, " ties=", ties, " renormalize=", renorm));
        const Tensor x = testing::random_tensor({t, h}, DType::bf16, rng);
        Tensor w = testing::random_tensor({e, h}, DType::bf16, rng, 0.05f);
        if (ties)
          for (int64_t r = 4; r < e; r += 4)
            std::memcpy(w.data_as<uint16_t>() + r * h, w.data_as<uint16_t>() + (r - 4) * h, size_t(h) * 2);
        // Reference logits in double.
        const std::vector<float> xv = to_f32_vector(x), wv = to_f32_vector(w);
        std::vector<float> want_logits(size_t(t * e));
        for (int64_t i = 0; i < t; ++i)
          for (int64_t r = 0; r < e; ++r) {
            double acc = 0;
            for (int64_t j = 0; j < h; ++j) acc += double(xv[size_t(i * h + j)]) * wv[size_t(r * h + j)];
            want_logits[size_t(i * e + r)] = float(acc);
          }
        Tensor want_l = Tensor::empty({t, e}, DType::f32, Device::cpu);
        from_f32_vector(want_logits, want_l);
        const Tensor d_x = x.to(Device::cuda), d_w = w.to(Device::cuda);
        ASSERT_TRUE(moe_router_fusable(t, e, h, k));
        Tensor logits = Tensor::empty({t, e}, DType::f32, Device::cuda);
        Tensor d_ids = Tensor::empty({t * k}, DType::i32, Device::cuda), d_wt = Tensor::empty({t * k}, DType::f32, Device::cuda);
        MoePermuteBuffers b = poisoned_buffers(t * k, e);
        for (int call = 0; call < 2; ++call) {
          for (const Tensor* p : {&logits, &d_ids, &d_wt, &b.perm.expert_offsets, &b.perm.sorted_pairs,
                                  &b.perm.active_experts, &b.perm.num_active, &b.pair_rows})
            poison(*p);
          moe_router_route_permute(d_x, d_w, logits, k, renorm, d_ids, d_wt, b, nullptr);
          const Tensor got_l = logits.to(Device::cpu);
          ASSERT_LT(testing::rel_error(got_l, want_l), 1e-5) << "call " << call;
          if (ties)
            for (int64_t i = 0; i < t; ++i)
              for (int64_t r = 4; r < e; r += 4)
                ASSERT_EQ(got_l.data_as<float>()[i * e + r], got_l.data_as<float>()[i * e + r - 4]);
          Tensor ids = Tensor::empty({t, k}, DType::i32, Device::cpu), wt = Tensor::empty({t, k}, DType::f32, Device::cpu);
          moe_route_ref(got_l, k, renorm, ids, wt);
          const std::vector<int32_t> want = ints(ids);
          ASSERT_EQ(ints(d_ids), want) << "call " << call;
          const std::vector<float> got_w = to_f32_vector(d_wt.to(Device::cpu)), want_w = to_f32_vector(wt);
          for (size_t i = 0; i < got_w.size(); ++i) ASSERT_NEAR(got_w[i], want_w[i], kWeightTol) << "pair " << i;
          check_permutation(want, e, b);
          EXPECT_EQ(ints(b.blocks_done), std::vector<int32_t>{0});
        }
      }
}

TEST(MoePermuteGpu, RouterRoutePermuteRejectsUnfusable) {
  MXMOE_REQUIRE_GPU();
  const auto call = [](int64_t t, int64_t e, int64_t h, int k) {
    Tensor x = Tensor::empty({t, h}, DType::bf16, Device::cuda), w = Tensor::empty({e, h}, DType::bf16, Device::cuda);
    Tensor logits = Tensor::empty({t, e}, DType::f32, Device::cuda);
    Tensor ids = Tensor::empty({t * k}, DType::i32, Device::cuda), wt = Tensor::empty({t * k}, DType::f32, Device::cuda);
    moe_router_route_permute(x, w, logits, k, true, ids, wt, moe_permute_buffers(t * k, e), nullptr);
  };
  EXPECT_THROW(call(17, 8, 64, 2), Error);     // T > 16
  EXPECT_THROW(call(16, 257, 64, 2), Error);   // T·E > 4096
  EXPECT_THROW(call(1, 8, 60, 2), Error);      // H not a multiple of 8
  EXPECT_NO_THROW(call(16, 256, 64, 8));
  CUDA_CHECK(cudaDeviceSynchronize());
}

bool bit_equal(const Tensor& a, const Tensor& b) {
  const Tensor ca = a.to(Device::cpu), cb = b.to(Device::cpu);
  return ca.nbytes() == cb.nbytes() && std::memcmp(ca.data(), cb.data(), ca.nbytes()) == 0;
}

// The residual add + RMSNorm inside the router launch: bit-equal to add_rmsnorm followed by
// moe_router_logits on the GPU (what the decoder ran before), and against the CPU: the residual
// exactly, the normed row as add_rmsnorm_ref within a bf16 rounding, the logits in double.
TEST(MoePermuteGpu, NormRouterMatchesUnfused) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(testing::fresh_seed());
  const float eps = 1e-6f;
  // H = 200: 25 vectors, one warp reduces; 2048 / 4096 / 8192: 256-1024 threads across warps.
  for (auto [e, h] : {std::pair{128, 2048}, {8, 4096}, {60, 256}, {3, 200}, {128, 8192}, {16, 64}}) {
    SCOPED_TRACE(cat("E=", e, " H=", h));
    ASSERT_TRUE(moe_norm_router_fusable(1, h));
    const Tensor residual = testing::random_tensor({1, h}, DType::bf16, rng, 4.f);
    const Tensor add = testing::random_tensor({1, h}, DType::bf16, rng);
    const Tensor norm_w = testing::random_tensor({h}, DType::bf16, rng);
    const Tensor router_w = testing::random_tensor({e, h}, DType::bf16, rng, 0.05f);
    const Tensor d_res = residual.to(Device::cuda), d_add = add.to(Device::cuda), d_nw = norm_w.to(Device::cuda),
                 d_rw = router_w.to(Device::cuda);
    // Unfused, on a copy of the residual (add_rmsnorm updates it in place).
    const Tensor want_res = residual.to(Device::cuda), want_n = Tensor::empty({1, h}, DType::bf16, Device::cuda);
    const Tensor want_l = Tensor::empty({1, e}, DType::f32, Device::cuda);
    add_rmsnorm(want_res, d_add, d_nw, eps, want_n, nullptr);
    moe_router_logits(want_n, d_rw, want_l, nullptr);
    const Tensor res_out = Tensor::empty({1, h}, DType::bf16, Device::cuda), n = Tensor::empty({1, h}, DType::bf16, Device::cuda);
    const Tensor logits = Tensor::empty({1, e}, DType::f32, Device::cuda);
    for (int call = 0; call < 2; ++call) {
      for (const Tensor* p : {&res_out, &n, &logits}) poison(*p);
      moe_norm_router_logits(d_res, d_add, d_nw, eps, res_out, n, d_rw, logits, nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      EXPECT_TRUE(bit_equal(res_out, want_res)) << "call " << call;
      EXPECT_TRUE(bit_equal(n, want_n)) << "call " << call;
      EXPECT_TRUE(bit_equal(logits, want_l)) << "call " << call;
      EXPECT_TRUE(bit_equal(d_res, residual)) << "the input residual changed";
    }
    // Independent of the GPU norm: the CPU reference.
    Tensor cpu_res = d_res.to(Device::cpu), cpu_n = Tensor::empty({1, h}, DType::bf16, Device::cpu);
    add_rmsnorm_ref(cpu_res, add, norm_w, eps, cpu_n);
    EXPECT_TRUE(bit_equal(res_out, cpu_res));
    EXPECT_LT(testing::rel_error(n.to(Device::cpu), cpu_n), 1e-2);
    const std::vector<float> nv = to_f32_vector(n.to(Device::cpu)), wv = to_f32_vector(router_w);
    std::vector<float> want(static_cast<size_t>(e));
    for (int64_t r = 0; r < e; ++r) {
      double acc = 0;
      for (int64_t j = 0; j < h; ++j) acc += double(nv[size_t(j)]) * wv[size_t(r * h + j)];
      want[size_t(r)] = float(acc);
    }
    Tensor want_cpu = Tensor::empty({1, e}, DType::f32, Device::cpu);
    from_f32_vector(want, want_cpu);
    EXPECT_LT(testing::rel_error(logits.to(Device::cpu), want_cpu), 1e-5);
  }
}

TEST(MoePermuteGpu, NormRouterRejectsBadArguments) {
  MXMOE_REQUIRE_GPU();
  const auto call = [](int64_t t, int64_t h, bool alias) {
    const Tensor res = Tensor::empty({t, h}, DType::bf16, Device::cuda), add = Tensor::empty({t, h}, DType::bf16, Device::cuda);
    const Tensor nw = Tensor::empty({h}, DType::bf16, Device::cuda), rw = Tensor::empty({8, h}, DType::bf16, Device::cuda);
    const Tensor out = alias ? res : Tensor::empty({t, h}, DType::bf16, Device::cuda);
    const Tensor n = Tensor::empty({t, h}, DType::bf16, Device::cuda), l = Tensor::empty({t, 8}, DType::f32, Device::cuda);
    moe_norm_router_logits(res, add, nw, 1e-6f, out, n, rw, l, nullptr);
  };
  EXPECT_THROW(call(2, 64, false), Error);     // more than one token
  EXPECT_THROW(call(1, 8200, false), Error);   // H > 8192
  EXPECT_THROW(call(1, 60, false), Error);     // H not a multiple of 8
  EXPECT_THROW(call(1, 64, true), Error);      // residual_out is residual
  EXPECT_NO_THROW(call(1, 64, false));
  CUDA_CHECK(cudaDeviceSynchronize());
}

// The MoE combine folded into the next add_rmsnorm: bit-equal to moe_combine then add_rmsnorm on
// the GPU, and the residual against a CPU loop of the same roundings; with the next kernel let go
// early and held back (cases alternate).
TEST(MoePermuteGpu, CombineAddRmsnormMatchesUnfused) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(testing::fresh_seed());
  const float eps = 1e-5f;
  bool early = true;
  for (auto [k, h] : {std::pair{8, 2048}, {2, 4096}, {4, 200}, {1, 64}, {9, 4096}, {32, 256}}) {
    early = !early;
    SCOPED_TRACE(cat("k=", k, " H=", h, " release_next_early=", early));
    const Tensor y = testing::random_tensor({k, h}, DType::f32, rng), weights = testing::random_tensor({k}, DType::f32, rng);
    const Tensor residual = testing::random_tensor({1, h}, DType::bf16, rng, 4.f);
    const Tensor norm_w = testing::random_tensor({h}, DType::bf16, rng);
    const Tensor d_y = y.to(Device::cuda), d_wt = weights.to(Device::cuda), d_nw = norm_w.to(Device::cuda);
    const Tensor mlp = Tensor::empty({1, h}, DType::bf16, Device::cuda), want_res = residual.to(Device::cuda);
    const Tensor want_n = Tensor::empty({1, h}, DType::bf16, Device::cuda);
    moe_combine(d_y, d_wt, nullptr, k, mlp, nullptr);
    add_rmsnorm(want_res, mlp, d_nw, eps, want_n, nullptr);
    const Tensor res = residual.to(Device::cuda), n = Tensor::empty({1, h}, DType::bf16, Device::cuda);
    poison(n);
    moe_combine_add_rmsnorm(d_y, d_wt, res, d_nw, eps, n, early, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_TRUE(bit_equal(res, want_res));
    EXPECT_TRUE(bit_equal(n, want_n));
    // residual + bf16(Σ w·y) in slot order, both rounded to bf16, as the CPU computes it.
    const auto bf16_round = [](float v) { return bf16_to_f32(f32_to_bf16(v)); };
    const std::vector<float> yv = to_f32_vector(y), wv = to_f32_vector(weights), rv = to_f32_vector(residual);
    std::vector<float> want(static_cast<size_t>(h));
    for (int64_t j = 0; j < h; ++j) {
      float acc = 0.f;
      for (int64_t s = 0; s < k; ++s) acc = std::fma(wv[size_t(s)], yv[size_t(s * h + j)], acc);
      want[size_t(j)] = bf16_round(rv[size_t(j)] + bf16_round(acc));
    }
    EXPECT_EQ(to_f32_vector(res.to(Device::cpu)), want);
  }
  const auto call = [](int64_t k, int64_t h, int64_t y_rows) {
    const Tensor y = Tensor::empty({y_rows, h}, DType::f32, Device::cuda), wt = Tensor::empty({k}, DType::f32, Device::cuda);
    const Tensor r = Tensor::empty({1, h}, DType::bf16, Device::cuda), nw = Tensor::empty({h}, DType::bf16, Device::cuda);
    moe_combine_add_rmsnorm(y, wt, r, nw, 1e-5f, Tensor::empty({1, h}, DType::bf16, Device::cuda), true, nullptr);
  };
  EXPECT_THROW(call(8, 2048, 7), Error);   // y rows != slots
  EXPECT_THROW(call(8, 4104, 8), Error);   // H > 4096
  EXPECT_THROW(call(8, 8192, 8), Error);
  EXPECT_THROW(call(8, 60, 8), Error);     // H not a multiple of 8
  EXPECT_NO_THROW(call(8, 64, 8));
  CUDA_CHECK(cudaDeviceSynchronize());
}

TEST(MoePermuteGpu, GatherSiluMulCombine) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(testing::fresh_seed());
  const int64_t t = 37, e = 16, k = 4, hidden = 96, inter = 64, m = t * k;
  const Tensor logits = testing::moe_logits(t, e, k, Load::random, rng);
  Tensor ids = Tensor::empty({t, k}, DType::i32, Device::cpu), w = Tensor::empty({t, k}, DType::f32, Device::cpu);
  moe_route_ref(logits, k, true, ids, w);
  MoePermuteBuffers b = moe_permute_buffers(m, e);
  moe_permute(ids.to(Device::cuda), b, nullptr);
  const std::vector<int32_t> sorted = ints(b.perm.sorted_pairs), rows = ints(b.pair_rows);

  // gather: exact copies of x rows.
  const Tensor x = testing::random_tensor({t, hidden}, DType::bf16, rng);
  Tensor xs = Tensor::empty({m, hidden}, DType::bf16, Device::cuda);
  poison(xs);
  moe_gather_rows(x.to(Device::cuda), b.perm, int(k), xs, nullptr);
  const Tensor xs_host = xs.to(Device::cpu);
  for (int64_t i = 0; i < m; ++i)
    ASSERT_EQ(0, std::memcmp(xs_host.data_as<uint16_t>() + i * hidden,
                             x.data_as<uint16_t>() + (sorted[size_t(i)] / k) * hidden, size_t(hidden) * 2))
        << "row " << i;

  // SiLU(gate) · up from bf16 inputs, rounded to bf16: within one bf16 rounding.
  const Tensor h = testing::random_tensor({m, 2 * inter}, DType::bf16, rng, 2.f);
  Tensor act = Tensor::empty({m, inter}, DType::bf16, Device::cuda);
  poison(act);
  moe_silu_mul(h.to(Device::cuda), act, nullptr);
  const std::vector<float> hv = to_f32_vector(h);
  std::vector<float> want(size_t(m * inter));
  for (int64_t r = 0; r < m; ++r)
    for (int64_t i = 0; i < inter; ++i) {
      const double g = hv[size_t(r * 2 * inter + i)], u = hv[size_t(r * 2 * inter + inter + i)];
      want[size_t(r * inter + i)] = float(g / (1 + std::exp(-g)) * u);
    }
  Tensor want_t = Tensor::empty({m, inter}, DType::f32, Device::cpu);
  from_f32_vector(want, want_t);
  EXPECT_LT(testing::rel_error(act, want_t), 4e-3);

  // combine, pair-indexed f32 y and expert-ordered bf16 y.
  const Tensor d_w = w.to(Device::cuda);
  for (DType ydt : {DType::f32, DType::bf16}) {
    SCOPED_TRACE(dtype_name(ydt));
    const Tensor y = testing::random_tensor({m, hidden}, ydt, rng);
    const std::vector<float> yv = to_f32_vector(y);
    const bool sorted_rows = ydt == DType::bf16;
    std::vector<float> ref(size_t(t * hidden), 0.f);
    for (int64_t i = 0; i < t; ++i)
      for (int64_t s = 0; s < k; ++s) {
        const int64_t row = sorted_rows ? rows[size_t(i * k + s)] : i * k + s;
        for (int64_t j = 0; j < hidden; ++j)
          ref[size_t(i * hidden + j)] += w.data_as<float>()[i * k + s] * yv[size_t(row * hidden + j)];
      }
    Tensor ref_t = Tensor::empty({t, hidden}, DType::f32, Device::cpu);
    from_f32_vector(ref, ref_t);
    Tensor out = Tensor::empty({t, hidden}, DType::bf16, Device::cuda);
    poison(out);
    moe_combine(y.to(Device::cuda), d_w, sorted_rows ? &b.pair_rows : nullptr, int(k), out, nullptr);
    EXPECT_LT(testing::rel_error(out, ref_t), 4e-3);
  }
}

}  // namespace
}  // namespace mxmoe
