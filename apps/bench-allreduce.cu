// All-reduce of a bf16 vector over the GPUs of this host: NCCL against the one-shot peer kernel
// (engine/peer_all_reduce.h), from a decode step's [1, 2048] to 1 MiB (NcclGroup takes the peer
// kernel up to PeerAllReduce::kDefaultSlotBytes, where it wins). Every rank
// replays a CUDA graph of 20 back-to-back all-reduces at once, so the host threads' skew is
// amortized; prints µs per all-reduce (median of 20 replays, rank 0). Needs 2 or more GPUs.
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <thread>

#include "apps/bench_util.h"
#include "engine/memory.h"
#include "engine/nccl_communicator.h"

using namespace mxmoe;

namespace {

// µs per all-reduce of `elems` bf16 by reduce(rank, x, stream) on `n` GPUs at once.
double us_per_all_reduce(int n, int64_t elems, const std::function<void(int, const Tensor&, cudaStream_t)>& reduce) {
  constexpr int kCalls = 20;
  std::vector<double> us(static_cast<size_t>(n));
  std::vector<std::thread> ranks;
  for (int r = 0; r < n; ++r)
    ranks.emplace_back([&, r] {
      CUDA_CHECK(cudaSetDevice(r));
      Stream stream;
      const Tensor x = bench::random_bf16({elems}, 7 + uint64_t(r), 0.01f, stream);
      us[size_t(r)] = 1e3 * bench::graph_ms_per_call(stream, kCalls, [&](int) { reduce(r, x, stream); });
    });
  for (std::thread& t : ranks) t.join();
  return us.front();
}

}  // namespace

int main() {
  try {
    const int n = cuda_device_count();
    if (n < 2) {
      std::printf("bench-allreduce: needs 2 or more GPUs, %d visible\n", n);
      return 0;
    }
    std::vector<int> devices;
    for (int d = 0; d < n; ++d) devices.push_back(d);
    constexpr int64_t kMaxBytes = 1 << 20;
    setenv("MXMOE_ALL_REDUCE", "nccl", 1);
    NcclGroup nccl(devices);
    unsetenv("MXMOE_ALL_REDUCE");
    const auto peer = PeerAllReduce::create(devices, kMaxBytes);
    if (!peer) {
      std::printf("bench-allreduce: the GPUs have no peer access\n");
      return 0;
    }
    std::printf("all-reduce of bf16 over %d GPUs, us per call (graph of 20, median of 20 replays)\n", n);
    std::printf("%10s %10s %10s %10s\n", "bytes", "nccl", "peer", "peer/nccl");
    for (int64_t bytes = 4096; bytes <= kMaxBytes; bytes *= 2) {
      const double a = us_per_all_reduce(n, bytes / 2, [&](int r, const Tensor& x, cudaStream_t s) { nccl.local(r).all_reduce_sum(x, s); });
      const double b = us_per_all_reduce(n, bytes / 2, [&](int r, const Tensor& x, cudaStream_t s) { peer->all_reduce_sum(r, x, s); });
      std::printf("%10lld %10.2f %10.2f %10.2f\n", (long long)bytes, a, b, b / a);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench-allreduce: %s\n", e.what());
    return 1;
  }
}
