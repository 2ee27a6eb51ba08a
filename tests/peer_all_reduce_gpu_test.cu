// The one-shot peer all-reduce (kernels/peer_all_reduce.h, engine/peer_all_reduce.h) on two GPUs
// against the host's rank-order sum (f32, rounded once: the kernel's result bit for bit): sizes
// from one element to a full slot, views that are not 16-byte aligned, many calls in a row (the
// double-buffered slots), replays of a CUDA graph, an abort that releases a rank whose peer never
// comes, and NcclGroup choosing it below the slot size and NCCL above. Skips below two GPUs and
// where the two GPUs have no peer access (then NcclGroup never uses it).
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <thread>

#include "engine/nccl_communicator.h"
#include "engine/peer_all_reduce.h"
#include "engine/stream.h"
#include "multi_gpu_util.h"
#include "test_util.h"

using namespace mxmoe;
using namespace mxmoe::testing;
using namespace std::chrono_literals;

namespace {

#define REQUIRE_PEER_ACCESS()                                                      \
  MXMOE_REQUIRE_GPUS(2);                                                           \
  if (int can = 0; cudaDeviceCanAccessPeer(&can, 0, 1) != cudaSuccess || !can)    \
  GTEST_SKIP() << "GPUs 0 and 1 have no peer access"

// Σ over ranks of xs[r] in rank order in f32, rounded once to their dtype.
Tensor rank_order_sum(const std::vector<Tensor>& xs) {
  std::vector<float> sum(size_t(xs.front().numel()), 0.f);
  for (const Tensor& x : xs) {
    const std::vector<float> v = to_f32_vector(x);
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += v[i];
  }
  Tensor out = Tensor::empty(xs.front().shape(), xs.front().dtype(), Device::cpu);
  from_f32_vector(sum, out);
  return out;
}

// One case: n elements of `dtype`, `offset` elements into a device buffer (1: not 16-byte aligned).
struct Case {
  int64_t n;
  DType dtype;
  int64_t offset;
};

std::string name(const Case& c) { return cat(c.n, " x ", dtype_name(c.dtype), " at offset ", c.offset); }

// Every case `rounds` times in a row on both ranks through `reduce(r, x, stream)`, each round on
// fresh values (rank r's mean r, so the sum differs from every input); each rank's result must be
// the rank-order sum, and the element before an offset view untouched.
template <class Reduce>
void expect_rank_order_sums(const std::vector<Case>& cases, int rounds, Reduce&& reduce) {
  std::mt19937_64 rng(fresh_seed());
  for (int round = 0; round < rounds; ++round)
    for (const Case& c : cases) {
      SCOPED_TRACE(cat(name(c), ", round ", round));
      std::vector<Tensor> inputs, buffers(2), results(2);
      for (int r = 0; r < 2; ++r) inputs.push_back(random_tensor({c.offset + c.n}, c.dtype, rng, 1.f, float(r)));
      std::vector<Tensor> addends;
      for (const Tensor& in : inputs) addends.push_back(in.slice(c.offset, c.offset + c.n));
      const Tensor want = rank_order_sum(addends);
      const std::vector<std::string> errors = on_each_gpu(2, [&](int r) {
        Stream stream;
        buffers[size_t(r)] = inputs[size_t(r)].to(Device::cuda);
        reduce(r, buffers[size_t(r)].slice(c.offset, c.offset + c.n), stream);
        stream.synchronize();
        results[size_t(r)] = buffers[size_t(r)].to(Device::cpu);
      });
      for (int r = 0; r < 2; ++r) {
        SCOPED_TRACE(cat("rank ", r));
        ASSERT_EQ(errors[size_t(r)], "(no error)");
        EXPECT_TRUE(same_bytes(results[size_t(r)].slice(c.offset, c.offset + c.n), want));
        if (c.offset) EXPECT_TRUE(same_bytes(results[size_t(r)].slice(0, 1), inputs[size_t(r)].slice(0, 1)));
      }
    }
}

// Whether `stream` finished within 10 s (a rank released by an abort); its state otherwise.
cudaError_t wait_for(cudaStream_t stream) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  cudaError_t state = cudaErrorNotReady;
  while ((state = cudaStreamQuery(stream)) == cudaErrorNotReady && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(1ms);
  return state;
}

}  // namespace

TEST(PeerAllReduceGpu, SumsInRankOrderForEverySizeAndAlignment) {
  REQUIRE_PEER_ACCESS();
  const auto peer = PeerAllReduce::create({0, 1}, 1 << 20);  // past the default: 64 blocks grid-striding
  ASSERT_NE(peer, nullptr);
  const int64_t slot = peer->slot_bytes();
  std::vector<Case> cases;
  // 1 element .. a full slot: one block up to 2048 bf16, 64 blocks grid-striding at the top.
  for (DType dtype : {DType::bf16, DType::f32})
    for (int64_t n : {int64_t(1), int64_t(7), int64_t(8), int64_t(9), int64_t(2048), int64_t(2049), int64_t(64 * 2048),
                      slot / int64_t(dtype_size(dtype))})
      for (int64_t offset : {0, 1})
        if (n * int64_t(dtype_size(dtype)) <= slot) cases.push_back({n, dtype, offset});
  expect_rank_order_sums(cases, 3, [&](int r, const Tensor& x, cudaStream_t s) { peer->all_reduce_sum(r, x, s); });
}

TEST(PeerAllReduceGpu, ReplaysInACudaGraph) {
  REQUIRE_PEER_ACCESS();
  const auto peer = PeerAllReduce::create({0, 1}, 1 << 20);  // [64, 2048] bf16 is past the default slot
  ASSERT_NE(peer, nullptr);
  std::mt19937_64 rng(fresh_seed());
  // Per rank: three tensors of different sizes (1, 3 and 64 blocks), reduced by one graph.
  const std::vector<std::pair<Shape, DType>> shapes = {{{5}, DType::bf16}, {{300, 7}, DType::f32}, {{64, 2048}, DType::bf16}};
  std::vector<std::vector<Tensor>> xs(2);
  std::vector<cudaGraphExec_t> execs(2);
  std::vector<std::unique_ptr<Stream>> streams(2);
  ASSERT_EQ(on_each_gpu(2,
                        [&](int r) {
                          streams[size_t(r)] = std::make_unique<Stream>();
                          for (const auto& [shape, dtype] : shapes) xs[size_t(r)].push_back(Tensor::empty(shape, dtype, Device::cuda));
                          cudaGraph_t graph;
                          CUDA_CHECK(cudaStreamBeginCapture(*streams[size_t(r)], cudaStreamCaptureModeThreadLocal));
                          for (const Tensor& x : xs[size_t(r)]) peer->all_reduce_sum(r, x, *streams[size_t(r)]);
                          CUDA_CHECK(cudaStreamEndCapture(*streams[size_t(r)], &graph));
                          CUDA_CHECK(cudaGraphInstantiate(&execs[size_t(r)], graph, 0));
                          CUDA_CHECK(cudaGraphDestroy(graph));
                        }),
            std::vector<std::string>(2, "(no error)"));
  for (int replay = 0; replay < 4; ++replay) {
    SCOPED_TRACE(cat("replay ", replay));
    std::vector<std::vector<Tensor>> inputs(2), results(2);
    for (int r = 0; r < 2; ++r)
      for (const auto& [shape, dtype] : shapes) inputs[size_t(r)].push_back(random_tensor(shape, dtype, rng, 1.f, float(r)));
    ASSERT_EQ(on_each_gpu(2,
                          [&](int r) {
                            for (size_t i = 0; i < shapes.size(); ++i) xs[size_t(r)][i].copy_from(inputs[size_t(r)][i]);
                            CUDA_CHECK(cudaGraphLaunch(execs[size_t(r)], *streams[size_t(r)]));
                            streams[size_t(r)]->synchronize();
                            for (const Tensor& x : xs[size_t(r)]) results[size_t(r)].push_back(x.to(Device::cpu));
                          }),
              std::vector<std::string>(2, "(no error)"));
    for (size_t i = 0; i < shapes.size(); ++i) {
      const Tensor want = rank_order_sum({inputs[0][i], inputs[1][i]});
      for (int r = 0; r < 2; ++r) EXPECT_TRUE(same_bytes(results[size_t(r)][i], want)) << "tensor " << i << ", rank " << r;
    }
  }
  on_each_gpu(2, [&](int r) { CUDA_CHECK(cudaGraphExecDestroy(execs[size_t(r)])); });
}

// Rank 0 waits in the kernel for a rank 1 that never calls; abort() lets it return.
TEST(PeerAllReduceGpu, AbortReleasesARankWaitingForItsPeer) {
  REQUIRE_PEER_ACCESS();
  const auto peer = PeerAllReduce::create({0, 1});
  ASSERT_NE(peer, nullptr);
  CUDA_CHECK(cudaSetDevice(0));
  Stream stream;
  const Tensor x = Tensor::empty({2048}, DType::bf16, Device::cuda);
  peer->all_reduce_sum(0, x, stream);
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(cudaStreamQuery(stream), cudaErrorNotReady) << "rank 0 finished without its peer";
  peer->abort();
  const cudaError_t state = wait_for(stream);
  EXPECT_EQ(state, cudaSuccess) << cudaGetErrorString(state);
}

// Through the communicator: the peer kernel up to the slot size, NCCL above (for two ranks both
// give a + b rounded once), both alike on every rank; MXMOE_ALL_REDUCE=nccl turns the peer kernel off.
TEST(PeerAllReduceGpu, NcclGroupUsesItUpToTheSlotSize) {
  REQUIRE_PEER_ACCESS();
  setenv("MXMOE_ALL_REDUCE", "nccl", 1);
  EXPECT_FALSE(NcclGroup({0, 1}).peer_all_reduce());
  unsetenv("MXMOE_ALL_REDUCE");
  NcclGroup group({0, 1});
  ASSERT_TRUE(group.peer_all_reduce());
  const int64_t slot_bf16 = PeerAllReduce::kDefaultSlotBytes / 2;
  expect_rank_order_sums({{2048, DType::bf16, 0}, {slot_bf16, DType::bf16, 0}, {slot_bf16 + 1, DType::bf16, 0},
                          {3 * slot_bf16, DType::f32, 1}},
                         2, [&](int r, const Tensor& x, cudaStream_t s) { group.local(r).all_reduce_sum(x, s); });
}

// A failing rank aborts the group (the runtime does): a rank already waiting in the peer kernel
// returns, and later collectives are the communicator's clear error.
TEST(PeerAllReduceGpu, GroupAbortReleasesAWaitingRank) {
  REQUIRE_PEER_ACCESS();
  NcclGroup group({0, 1});
  ASSERT_TRUE(group.peer_all_reduce());
  CUDA_CHECK(cudaSetDevice(0));
  Stream stream;
  const Tensor x = Tensor::empty({100}, DType::f32, Device::cuda);
  group.local(0).all_reduce_sum(x, stream);
  std::this_thread::sleep_for(100ms);
  group.abort();
  const cudaError_t state = wait_for(stream);
  EXPECT_EQ(state, cudaSuccess) << cudaGetErrorString(state);
  EXPECT_NE(error_of([&] { group.local(0).all_reduce_sum(x, stream); }).find("aborted"), std::string::npos);
}
