// moe_gate_up_decode / moe_down_decode against per-expert matmul_ref (double accumulation on the
// exactly dequantized weights), on fresh random inputs and routings; outputs poisoned with NaN
// first. The permutation is built on the CPU from top-k ids and uploaded. Threshold: relative
// error <= 5e-3.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "engine/stream.h"
#include "kernels/moe_decode.h"
#include "kernels/moe_routing.h"
#include "tests/w8a16_test_util.h"

namespace mxmoe::testing {
namespace {

constexpr double kTol = 5e-3;

enum class Route {
  random,         // k distinct random experts per token
  one_takes_all,  // expert E-1 is in every token's top-k
  all_to_one,     // every pair goes to expert 0: one expert with T·k pairs (several passes)
};

// Expert of every pair p = t·k + slot.
std::vector<int> route(int64_t tokens, int64_t experts, int top_k, Route r, std::mt19937_64& rng) {
  std::vector<int> ids;
  std::vector<int> all(static_cast<size_t>(experts));
  for (int64_t t = 0; t < tokens; ++t) {
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    if (r == Route::one_takes_all) {
      auto it = std::find(all.begin(), all.end(), int(experts - 1));
      std::swap(*it, all[size_t(rng() % size_t(top_k))]);
    }
    for (int s = 0; s < top_k; ++s) ids.push_back(r == Route::all_to_one ? 0 : all[size_t(s)]);
  }
  return ids;
}

Tensor i32_tensor(const std::vector<int>& v) {
  Tensor t = Tensor::empty({int64_t(v.size())}, DType::i32, Device::cpu);
  std::copy(v.begin(), v.end(), t.data_as<int>());
  return t.to(Device::cuda);
}

// The permutation of kernels/moe_permutation.h, built on the CPU; pairs_of[e] lists expert e's pairs.
struct HostPerm {
  MoePermutation perm;
  std::vector<std::vector<int>> pairs_of;
};

HostPerm make_perm(const std::vector<int>& ids, int64_t experts) {
  HostPerm h;
  h.pairs_of.resize(size_t(experts));
  for (size_t p = 0; p < ids.size(); ++p) h.pairs_of[size_t(ids[p])].push_back(int(p));
  std::vector<int> offsets{0}, sorted, active(size_t(experts), -1);
  int num_active = 0;
  for (int64_t e = 0; e < experts; ++e) {
    const auto& ps = h.pairs_of[size_t(e)];
    sorted.insert(sorted.end(), ps.begin(), ps.end());
    offsets.push_back(int(sorted.size()));
    if (!ps.empty()) active[size_t(num_active++)] = int(e);
  }
  h.perm = {i32_tensor(offsets), i32_tensor(sorted), i32_tensor(active), i32_tensor({num_active})};
  return h;
}

// One expert's weights, in either format.
MxTensor expert(const MxTensor& w, int64_t e) { return {w.elems.select(e), w.scales.select(e)}; }
Tensor expert(const Tensor& w, int64_t e) { return w.select(e); }
Tensor device_copy(const Tensor& w) { return w.to(Device::cuda); }
MxTensor device_copy(const MxTensor& w) { return to_device(w); }

// Rows `rows` of a CPU [R, C] tensor.
Tensor gather(const Tensor& x, const std::vector<int>& rows) {
  const int64_t c = x.size(1);
  const size_t row_bytes = size_t(c) * dtype_size(x.dtype());
  Tensor out = Tensor::empty({int64_t(rows.size()), c}, x.dtype(), Device::cpu);
  for (size_t i = 0; i < rows.size(); ++i)
    std::copy_n(static_cast<const char*>(x.data()) + size_t(rows[i]) * row_bytes, row_bytes,
                static_cast<char*>(out.data()) + i * row_bytes);
  return out;
}

// act[0:I] = SiLU(gate) · up of one row h = [gate | up] (2I values), in double.
void silu_up_ref(const float* h, int64_t inter, float* act) {
  for (int64_t n = 0; n < inter; ++n) {
    const double gate = h[n], up = h[inter + n];
    act[n] = float(gate / (1.0 + std::exp(-gate)) * up);
  }
}

struct Shape4 {
  int64_t experts;
  int top_k;
  int64_t hidden, inter;
};

// Runs both kernels for one routing and checks them against the reference; w13 [E, 2I, H], w2 [E, H, I].
template <class WT>
void check(const Shape4& s, const WT& w13, const WT& w2, const WT& w13_gpu, const WT& w2_gpu, int64_t tokens, Route r,
           std::mt19937_64& rng, const DecodeTuning& tuning = {}) {
  SCOPED_TRACE(::testing::Message() << "E=" << s.experts << " k=" << s.top_k << " H=" << s.hidden << " I=" << s.inter
                                    << " T=" << tokens << " route=" << int(r) << " splits=" << tuning.splits
                                    << " pdl=" << tuning.programmatic_launch);
  const int64_t pairs = tokens * s.top_k;
  const HostPerm h = make_perm(route(tokens, s.experts, s.top_k, r, rng), s.experts);

  // gate/up + SiLU.
  const Tensor x = random_tensor({tokens, s.hidden}, DType::bf16, rng);
  const Tensor act = poisoned({pairs, s.inter}, DType::bf16);
  moe_gate_up_decode(x.to(Device::cuda), w13_gpu, h.perm, s.top_k, act, nullptr, tuning);
  std::vector<float> act_ref(size_t(pairs * s.inter));
  for (int64_t e = 0; e < s.experts; ++e) {
    const auto& ps = h.pairs_of[size_t(e)];
    if (ps.empty()) continue;
    std::vector<int> token_rows;
    for (int p : ps) token_rows.push_back(p / s.top_k);
    Tensor out = Tensor::empty({int64_t(ps.size()), 2 * s.inter}, DType::f32, Device::cpu);
    matmul_ref(gather(x, token_rows), expert(w13, e), nullptr, out);
    const float* o = out.data_as<const float>();
    for (size_t j = 0; j < ps.size(); ++j) silu_up_ref(o + j * size_t(2 * s.inter), s.inter, &act_ref[size_t(ps[j] * s.inter)]);
  }
  Tensor act_ref_t = Tensor::empty({pairs, s.inter}, DType::f32, Device::cpu);
  from_f32_vector(act_ref, act_ref_t);
  EXPECT_LE(rel_error(act, act_ref_t), kTol) << "gate_up";

  // down, on fresh activations.
  const Tensor a = random_tensor({pairs, s.inter}, DType::bf16, rng);
  const Tensor y = poisoned({pairs, s.hidden}, DType::f32);
  moe_down_decode(a.to(Device::cuda), w2_gpu, h.perm, y, nullptr, tuning);
  Tensor y_ref = Tensor::empty({pairs, s.hidden}, DType::f32, Device::cpu);
  for (int64_t e = 0; e < s.experts; ++e) {
    const auto& ps = h.pairs_of[size_t(e)];
    if (ps.empty()) continue;
    Tensor out = Tensor::empty({int64_t(ps.size()), s.hidden}, DType::f32, Device::cpu);
    matmul_ref(gather(a, ps), expert(w2, e), nullptr, out);
    for (size_t j = 0; j < ps.size(); ++j)
      std::copy_n(out.data_as<const float>() + j * size_t(s.hidden), s.hidden,
                  y_ref.data_as<float>() + size_t(ps[j] * s.hidden));
  }
  EXPECT_LE(rel_error(y, y_ref), kTol) << "down";
}

template <class WT>
void run_cases(const Shape4& s, const WT& w13, const WT& w2, std::mt19937_64& rng) {
  const WT w13_gpu = device_copy(w13), w2_gpu = device_copy(w2);
  for (int64_t tokens : {1, 7, 16}) check(s, w13, w2, w13_gpu, w2_gpu, tokens, Route::random, rng);
  check(s, w13, w2, w13_gpu, w2_gpu, 16, Route::one_takes_all, rng);
  check(s, w13, w2, w13_gpu, w2_gpu, 7, Route::all_to_one, rng);
  check(s, w13, w2, w13_gpu, w2_gpu, 16, Route::all_to_one, rng);
}

TEST(MoeDecode, Mxfp8) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  // Mixtral-like (E=8, k=2) with the real I as down's K, Qwen3-30B-A3B (real), Qwen1.5-MoE-like (E=60, k=4).
  for (const Shape4 s : {Shape4{8, 2, 1024, 1408}, Shape4{8, 2, 256, 14336}, Shape4{128, 8, 2048, 768},
                         Shape4{60, 4, 2048, 1408}}) {
    const MxTensor w13 = random_mxfp8({s.experts, 2 * s.inter, s.hidden}, rng);
    const MxTensor w2 = random_mxfp8({s.experts, s.hidden, s.inter}, rng);
    run_cases(s, w13, w2, rng);
  }
}

TEST(MoeDecode, Bf16) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  for (const Shape4 s : {Shape4{8, 2, 512, 640}, Shape4{128, 8, 256, 96}, Shape4{60, 4, 256, 352}}) {
    const Tensor w13 = random_tensor({s.experts, 2 * s.inter, s.hidden}, DType::bf16, rng, 0.05f);
    const Tensor w2 = random_tensor({s.experts, s.hidden, s.inter}, DType::bf16, rng, 0.05f);
    run_cases(s, w13, w2, rng);
  }
}

// Forced split-K values (uneven last slice, K shorter than the split) with and without
// programmatic dependent launch, on the Qwen3-30B-A3B shape and a short-K one.
TEST(MoeDecode, ForcedSplits) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  for (const Shape4 s : {Shape4{128, 8, 2048, 768}, Shape4{8, 2, 160, 352}}) {
    const MxTensor w13 = random_mxfp8({s.experts, 2 * s.inter, s.hidden}, rng);
    const MxTensor w2 = random_mxfp8({s.experts, s.hidden, s.inter}, rng);
    const MxTensor w13_gpu = device_copy(w13), w2_gpu = device_copy(w2);
    for (int splits : {1, 3, 4, 8, 16})
      for (bool pdl : {true, false})
        for (int64_t tokens : {1, 16}) check(s, w13, w2, w13_gpu, w2_gpu, tokens, Route::random, rng, {splits, pdl});
  }
}

// act (computed from x) and y (from down_in) against per-expert matmul_ref in slot order, and the
// ids and weights the kernels wrote against moe_route_ref's (ids_ref, weights_ref [1, top_k]).
template <class WT>
void expect_slots_match(const Shape4& s, const WT& w13, const WT& w2, const Tensor& x, const Tensor& act,
                        const Tensor& down_in, const Tensor& y, const Tensor& ids_ref, const Tensor& weights_ref,
                        const Tensor& ids, const Tensor& weights) {
  std::vector<float> act_ref(size_t(s.top_k * s.inter));
  Tensor y_ref = Tensor::empty({s.top_k, s.hidden}, DType::f32, Device::cpu);
  for (int slot = 0; slot < s.top_k; ++slot) {
    const int64_t e = ids_ref.data_as<int32_t>()[slot];
    Tensor h = Tensor::empty({1, 2 * s.inter}, DType::f32, Device::cpu);
    matmul_ref(x, expert(w13, e), nullptr, h);
    silu_up_ref(h.data_as<const float>(), s.inter, &act_ref[size_t(slot * s.inter)]);
    matmul_ref(down_in.slice(slot, slot + 1), expert(w2, e), nullptr, y_ref.slice(slot, slot + 1));
  }
  Tensor act_ref_t = Tensor::empty({s.top_k, s.inter}, DType::f32, Device::cpu);
  from_f32_vector(act_ref, act_ref_t);
  EXPECT_LE(rel_error(act, act_ref_t), kTol) << "gate_up";
  EXPECT_LE(rel_error(y, y_ref), kTol) << "down";
  const Tensor ids_got = ids.to(Device::cpu);
  for (int slot = 0; slot < s.top_k; ++slot)
    EXPECT_EQ(ids_got.data_as<int32_t>()[slot], ids_ref.data_as<int32_t>()[slot]) << "slot " << slot;
  EXPECT_LE(rel_error(weights, weights_ref.view({s.top_k})), 1e-6) << "weights";
}

// One token routed by the kernels themselves (MoeTokenRoute): the slots' experts from the router
// logits as moe_route_ref picks them (ties included: two experts share the top logit, and the
// lowest index must win), act and y against per-expert matmul_ref in slot order, and the ids and
// weights the down kernel writes against moe_route_ref's.
template <class WT>
void check_one_token(const Shape4& s, const WT& w13, const WT& w2, bool renormalize, std::mt19937_64& rng) {
  SCOPED_TRACE(::testing::Message() << "E=" << s.experts << " k=" << s.top_k << " H=" << s.hidden << " I=" << s.inter
                                    << " renormalize=" << renormalize);
  const WT w13_gpu = device_copy(w13), w2_gpu = device_copy(w2);
  Tensor logits = random_tensor({1, s.experts}, DType::f32, rng);
  float* l = logits.data_as<float>();
  const int64_t a = int64_t(rng() % uint64_t(s.experts)), b = (a + 1 + int64_t(rng() % uint64_t(s.experts - 1))) % s.experts;
  l[a] = l[b] = 5.f;  // a tie at the top
  Tensor ids_ref = Tensor::empty({1, s.top_k}, DType::i32, Device::cpu);
  Tensor weights_ref = Tensor::empty({1, s.top_k}, DType::f32, Device::cpu);
  moe_route_ref(logits, s.top_k, renormalize, ids_ref, weights_ref);
  ASSERT_EQ(ids_ref.data_as<int32_t>()[0], int32_t(std::min(a, b)));

  const Tensor ids = poisoned({s.top_k}, DType::i32), weights = poisoned({s.top_k}, DType::f32);
  const MoeTokenRoute route{logits.to(Device::cuda), s.top_k, renormalize, ids, weights};
  const Tensor x = random_tensor({1, s.hidden}, DType::bf16, rng);
  const Tensor act = poisoned({s.top_k, s.inter}, DType::bf16);
  moe_gate_up_decode(x.to(Device::cuda), w13_gpu, route, act, nullptr);
  const Tensor a_in = random_tensor({s.top_k, s.inter}, DType::bf16, rng);
  const Tensor y = poisoned({s.top_k, s.hidden}, DType::f32);
  moe_down_decode(a_in.to(Device::cuda), w2_gpu, route, y, nullptr);
  expect_slots_match(s, w13, w2, x, act, a_in, y, ids_ref, weights_ref, ids, weights);
}

TEST(MoeDecode, OneTokenRoutesItself) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  for (const Shape4 s : {Shape4{128, 8, 2048, 768}, Shape4{8, 2, 256, 14336}, Shape4{60, 4, 512, 352}}) {
    const MxTensor w13 = random_mxfp8({s.experts, 2 * s.inter, s.hidden}, rng);
    const MxTensor w2 = random_mxfp8({s.experts, s.hidden, s.inter}, rng);
    check_one_token(s, w13, w2, true, rng);
    check_one_token(s, w13, w2, false, rng);
  }
  const Shape4 s{64, 8, 256, 96};
  const Tensor w13 = random_tensor({s.experts, 2 * s.inter, s.hidden}, DType::bf16, rng, 0.05f);
  const Tensor w2 = random_tensor({s.experts, s.hidden, s.inter}, DType::bf16, rng, 0.05f);
  check_one_token(s, w13, w2, true, rng);
  // Two tokens, or logits of another expert count: Errors.
  const MxTensor m13 = mxfp8_empty({8, 128, 64}, Device::cuda), m2 = mxfp8_empty({8, 64, 64}, Device::cuda);
  const Tensor i2 = Tensor::empty({2}, DType::i32, Device::cuda), f2 = Tensor::empty({2}, DType::f32, Device::cuda);
  const MoeTokenRoute good{Tensor::empty({1, 8}, DType::f32, Device::cuda), 2, true, i2, f2};
  const MoeTokenRoute bad{Tensor::empty({1, 9}, DType::f32, Device::cuda), 2, true, i2, f2};
  EXPECT_THROW(moe_gate_up_decode(Tensor::empty({2, 64}, DType::bf16, Device::cuda), m13, good,
                                  Tensor::empty({4, 64}, DType::bf16, Device::cuda), nullptr),
               Error);
  EXPECT_THROW(moe_gate_up_decode(Tensor::empty({1, 64}, DType::bf16, Device::cuda), m13, bad,
                                  Tensor::empty({2, 64}, DType::bf16, Device::cuda), nullptr),
               Error);
  EXPECT_THROW(moe_down_decode(Tensor::empty({2, 64}, DType::bf16, Device::cuda), m2, bad,
                               Tensor::empty({2, 64}, DType::f32, Device::cuda), nullptr),
               Error);
}

// The one-launch kernel's counters, zeroed as a caller hands them over, and the check that a launch
// left them so.
Tensor zeroed_counters(int top_k) {
  Tensor counters = Tensor::empty({moe_experts_counters(top_k)}, DType::i32, Device::cuda);
  CUDA_CHECK(cudaMemset(counters.data(), 0, counters.nbytes()));
  return counters;
}
void expect_counters_zero(const Tensor& counters) {
  const Tensor c = counters.to(Device::cpu);
  for (int64_t i = 0; i < c.numel(); ++i) EXPECT_EQ(c.data_as<int32_t>()[i], 0) << "counter " << i;
}

// Both expert GEMMs of one token in one launch (moe_experts_decode): act against the reference from
// x, y against the reference from the kernel's own act (so down is checked on exactly its input),
// the ids and weights as moe_route_ref picks them, and the slot counters back at zero. Three calls
// in a row on one stream with fresh inputs (a count left behind would break the next call).
void check_one_launch(const Shape4& s, std::mt19937_64& rng) {
  SCOPED_TRACE(::testing::Message() << "E=" << s.experts << " k=" << s.top_k << " H=" << s.hidden << " I=" << s.inter);
  ASSERT_TRUE(moe_experts_one_launch_fits(s.hidden, s.inter, s.top_k));
  const MxTensor w13 = random_mxfp8({s.experts, 2 * s.inter, s.hidden}, rng);
  const MxTensor w2 = random_mxfp8({s.experts, s.hidden, s.inter}, rng);
  const MxTensor w13_gpu = to_device(w13), w2_gpu = to_device(w2);
  const Tensor counters = zeroed_counters(s.top_k);
  Stream stream;
  for (int call = 0; call < 3; ++call) {
    SCOPED_TRACE(::testing::Message() << "call " << call);
    const bool renormalize = call % 2 == 0;
    const Tensor logits = random_tensor({1, s.experts}, DType::f32, rng);
    Tensor ids_ref = Tensor::empty({1, s.top_k}, DType::i32, Device::cpu);
    Tensor weights_ref = Tensor::empty({1, s.top_k}, DType::f32, Device::cpu);
    moe_route_ref(logits, s.top_k, renormalize, ids_ref, weights_ref);
    const Tensor ids = poisoned({s.top_k}, DType::i32), weights = poisoned({s.top_k}, DType::f32);
    const MoeTokenRoute route{logits.to(Device::cuda), s.top_k, renormalize, ids, weights};
    const Tensor x = random_tensor({1, s.hidden}, DType::bf16, rng);
    const Tensor act = poisoned({s.top_k, s.inter}, DType::bf16), y = poisoned({s.top_k, s.hidden}, DType::f32);
    moe_experts_decode(x.to(Device::cuda, stream), w13_gpu, w2_gpu, route, act, y, counters, stream);
    stream.synchronize();

    const Tensor act_got = act.to(Device::cpu);
    expect_slots_match(s, w13, w2, x, act_got, act_got, y, ids_ref, weights_ref, ids, weights);
    expect_counters_zero(counters);
  }
}

// Holds one SM per block (more than half its shared memory) for `cycles` clocks.
__global__ void hold_sms(long long cycles) {
  extern __shared__ unsigned char held[];
  const long long start = clock64();
  while (clock64() - start < cycles) held[threadIdx.x] = 0;
}

// The one-launch kernel on part of the GPU: a kernel on a third stream holds half the SMs while
// two calls with their own counters run at once on two more streams, so neither gets its whole
// grid resident at first. Blocks claim the work (several gate/up columns and down units each), so
// both finish (a grid waiting on its non-resident blocks would deadlock against the other), and
// both match the reference on their own inputs.
TEST(MoeDecode, OneLaunchOnPartOfTheGpu) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  const Shape4 s{128, 8, 2048, 768};
  ASSERT_TRUE(moe_experts_one_launch_fits(s.hidden, s.inter, s.top_k));
  const MxTensor w13 = random_mxfp8({s.experts, 2 * s.inter, s.hidden}, rng);
  const MxTensor w2 = random_mxfp8({s.experts, s.hidden, s.inter}, rng);
  const MxTensor w13_gpu = to_device(w13), w2_gpu = to_device(w2);
  const int hold_smem = 150 * 1024;
  CUDA_CHECK(cudaFuncSetAttribute(hold_sms, cudaFuncAttributeMaxDynamicSharedMemorySize, hold_smem));
  int sms = 0, clock_khz = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  CUDA_CHECK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, 0));
  struct Call {
    Stream stream;
    Tensor logits, ids_ref, weights_ref, ids, weights, x, act, y, counters;
  };
  std::vector<Call> calls(2);
  for (Call& c : calls) {
    c.logits = random_tensor({1, s.experts}, DType::f32, rng);
    c.ids_ref = Tensor::empty({1, s.top_k}, DType::i32, Device::cpu);
    c.weights_ref = Tensor::empty({1, s.top_k}, DType::f32, Device::cpu);
    moe_route_ref(c.logits, s.top_k, true, c.ids_ref, c.weights_ref);
    c.ids = poisoned({s.top_k}, DType::i32);
    c.weights = poisoned({s.top_k}, DType::f32);
    c.x = random_tensor({1, s.hidden}, DType::bf16, rng);
    c.act = poisoned({s.top_k, s.inter}, DType::bf16);
    c.y = poisoned({s.top_k, s.hidden}, DType::f32);
    c.counters = zeroed_counters(s.top_k);
  }
  std::vector<Tensor> logits_gpu, x_gpu;
  for (Call& c : calls) {
    logits_gpu.push_back(c.logits.to(Device::cuda));
    x_gpu.push_back(c.x.to(Device::cuda));
  }
  CUDA_CHECK(cudaDeviceSynchronize());
  Stream holder;
  hold_sms<<<unsigned(sms / 2), 32, size_t(hold_smem), holder>>>(20LL * clock_khz);  // ~20 ms
  CUDA_CHECK(cudaGetLastError());
  for (size_t i = 0; i < calls.size(); ++i) {
    Call& c = calls[i];
    const MoeTokenRoute route{logits_gpu[i], s.top_k, true, c.ids, c.weights};
    moe_experts_decode(x_gpu[i], w13_gpu, w2_gpu, route, c.act, c.y, c.counters, c.stream);
  }
  CUDA_CHECK(cudaDeviceSynchronize());
  for (Call& c : calls) {
    const Tensor act_got = c.act.to(Device::cpu);
    expect_slots_match(s, w13, w2, c.x, act_got, act_got, c.y, c.ids_ref, c.weights_ref, c.ids, c.weights);
    expect_counters_zero(c.counters);
  }
}

TEST(MoeDecode, OneTokenInOneLaunch) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  // Qwen3-30B-A3B, OLMoE and Qwen2-MoE experts, and a small shape with K tails (I = 96 is not a
  // whole 64-k step) and three W2 blocks per slot.
  for (const Shape4 s : {Shape4{128, 8, 2048, 768}, Shape4{64, 8, 2048, 1024}, Shape4{60, 4, 2048, 1408},
                         Shape4{8, 2, 384, 96}})
    check_one_launch(s, rng);
  // What does not fit: H not a multiple of 128, Mixtral's W2 rows (14336 bytes each) in shared memory;
  // a call that does not fit is an Error.
  EXPECT_FALSE(moe_experts_one_launch_fits(200, 96, 2));
  EXPECT_FALSE(moe_experts_one_launch_fits(4096, 14336, 2));
  const MxTensor m13 = mxfp8_empty({4, 192, 224}, Device::cuda), m2 = mxfp8_empty({4, 224, 96}, Device::cuda);
  const Tensor counters = Tensor::empty({moe_experts_counters(2)}, DType::i32, Device::cuda);
  const MoeTokenRoute route{Tensor::empty({1, 4}, DType::f32, Device::cuda), 2, true,
                            Tensor::empty({2}, DType::i32, Device::cuda), Tensor::empty({2}, DType::f32, Device::cuda)};
  EXPECT_THROW(moe_experts_decode(Tensor::empty({1, 224}, DType::bf16, Device::cuda), m13, m2, route,
                                  Tensor::empty({2, 96}, DType::bf16, Device::cuda),
                                  Tensor::empty({2, 224}, DType::f32, Device::cuda), counters, nullptr),
               Error);
}

TEST(MoeDecode, BadInput) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  const HostPerm h = make_perm(route(2, 8, 2, Route::random, rng), 8);
  const MxTensor w13 = mxfp8_empty({8, 128, 64}, Device::cuda), w2 = mxfp8_empty({8, 64, 64}, Device::cuda);
  const Tensor x = Tensor::empty({2, 64}, DType::bf16, Device::cuda);
  EXPECT_THROW(moe_gate_up_decode(x, w13, h.perm, 2, Tensor::empty({4, 63}, DType::bf16, Device::cuda), nullptr), Error);
  EXPECT_THROW(moe_gate_up_decode(x, w13, h.perm, 3, Tensor::empty({6, 64}, DType::bf16, Device::cuda), nullptr), Error);
  EXPECT_THROW(moe_down_decode(Tensor::empty({4, 64}, DType::bf16, Device::cuda), w2, h.perm,
                               Tensor::empty({4, 64}, DType::bf16, Device::cuda), nullptr),
               Error);
  const MoePermutation short_perm{h.perm.expert_offsets.slice(0, 8), h.perm.sorted_pairs, h.perm.active_experts,
                                  h.perm.num_active};
  EXPECT_THROW(moe_down_decode(Tensor::empty({4, 64}, DType::bf16, Device::cuda), w2, short_perm,
                               Tensor::empty({4, 64}, DType::f32, Device::cuda), nullptr),
               Error);
}

}  // namespace
}  // namespace mxmoe::testing
