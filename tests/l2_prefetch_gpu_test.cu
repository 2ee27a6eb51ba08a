// L2 prefetch is a hint: over any ranges (unaligned, tiny, empty, several at once, on a side
// stream inside a captured graph) it must run without a CUDA error and leave memory unchanged.
#include <gtest/gtest.h>

#include <vector>

#include "engine/cuda_graph.h"
#include "engine/l2_prefetcher.h"
#include "engine/stream.h"
#include "kernels/l2_prefetch.h"
#include "test_util.h"

using namespace mxmoe;

namespace {

const uint8_t* at(const Tensor& t, size_t offset) { return t.data_as<const uint8_t>() + offset; }

Tensor random_bytes(int64_t n, std::mt19937_64& rng) {
  Tensor t = Tensor::empty({n}, DType::u8, Device::cpu);
  for (int64_t i = 0; i < n; ++i) t.data_as<uint8_t>()[i] = uint8_t(rng());
  return t;
}

}  // namespace

TEST(L2PrefetchGpu, AnyRangesLeaveMemoryUnchanged) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(mxmoe::testing::fresh_seed());
  const Tensor host = random_bytes((int64_t(9) << 20) + 77, rng);  // 9 MB + 77
  const Tensor dev = host.to(Device::cuda);
  Stream stream;
  const size_t n = size_t(host.numel());
  const std::vector<std::vector<L2Range>> cases = {
      {{at(dev, 0), n}},                                                        // whole
      {{at(dev, 3), 1}, {at(dev, 5), 15}, {at(dev, 1), 40}, {at(dev, 17), 0}},  // tiny and unaligned
      {{nullptr, 4096}, {at(dev, 4096), 4096 * 32 + 16}},                       // null skipped; one block + 16 B
      {{at(dev, 1), n - 1}, {at(dev, 0), 100}, {at(dev, n / 2), n / 2}},       // overlapping, odd ends
      {}};
  for (const auto& ranges : cases) {
    l2_prefetch(ranges, stream);
    stream.synchronize();
  }
  EXPECT_TRUE(mxmoe::testing::same_bytes(dev, host));
}

TEST(L2PrefetchGpu, SideStreamInsideACapturedGraph) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(mxmoe::testing::fresh_seed());
  const Tensor host = random_bytes(1 << 20, rng);
  const Tensor dev = host.to(Device::cuda);
  Tensor copy = Tensor::empty({1 << 20}, DType::u8, Device::cuda);
  Stream stream;
  L2Prefetcher prefetcher;
  const L2Range range{dev.data(), dev.nbytes()};
  CudaGraph graph = CudaGraph::capture(stream, [&] {
    prefetcher.issue({&range, 1}, stream);
    copy.copy_from(dev, stream);  // the step's own work goes on beside the prefetch
    prefetcher.issue({&range, 1}, stream);
    prefetcher.join(stream);  // a capture must end joined
  });
  for (int i = 0; i < 3; ++i) graph.launch(stream);
  stream.synchronize();
  EXPECT_TRUE(mxmoe::testing::same_bytes(copy, host));
}

TEST(L2PrefetchGpu, RejectsTooManyRanges) {
  MXMOE_REQUIRE_GPU();
  const std::vector<L2Range> ranges(kL2PrefetchMaxRanges + 1);
  EXPECT_NE(mxmoe::testing::error_of([&] { l2_prefetch(ranges, nullptr); }).find("at most"), std::string::npos);
}
