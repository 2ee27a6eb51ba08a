// The CPU communicator (simulated ranks on threads) and the TCP bootstrap of the multi-node
// ncclUniqueId exchange, over loopback. The all-reduce oracle is the f32 sum in rank order computed
// here from the inputs; bf16 results must equal that sum rounded once (and so lie within 2^-8
// relative of it per element).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include "engine/cpu_communicator.h"
#include "engine/error.h"
#include "engine/tcp_bootstrap.h"
#include "test_util.h"

using namespace mxmoe;
using mxmoe::testing::error_of;
using mxmoe::testing::fresh_seed;
using mxmoe::testing::random_tensor;
using mxmoe::testing::same_bytes;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

Tensor clone(const Tensor& t) {
  Tensor c = Tensor::empty(t.shape(), t.dtype(), Device::cpu);
  c.copy_from(t);
  return c;
}

Tensor poisoned(const Shape& shape, DType dtype) {  // 0xff bytes: NaN in f32 and bf16
  Tensor t = Tensor::empty(shape, dtype, Device::cpu);
  std::memset(t.data(), 0xff, t.nbytes());
  return t;
}

// The oracle: Σ_r inputs[r] in f32, added in rank order.
std::vector<float> rank_order_sum(const std::vector<Tensor>& inputs) {
  std::vector<float> sum = to_f32_vector(inputs[0]);
  for (size_t r = 1; r < inputs.size(); ++r) {
    const std::vector<float> v = to_f32_vector(inputs[r]);
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += v[i];
  }
  return sum;
}

void expect_reduced(const std::vector<Tensor>& inputs, const std::vector<Tensor>& results) {
  const std::vector<float> sum = rank_order_sum(inputs);
  Tensor exact = Tensor::empty(inputs[0].shape(), DType::f32, Device::cpu);
  from_f32_vector(sum, exact);
  Tensor rounded = Tensor::empty(inputs[0].shape(), inputs[0].dtype(), Device::cpu);
  from_f32_vector(sum, rounded);
  ASSERT_FALSE(same_bytes(rounded, inputs[0]));  // a communicator that does nothing must fail
  for (size_t r = 0; r < results.size(); ++r) {
    SCOPED_TRACE(cat("rank ", r));
    EXPECT_TRUE(same_bytes(results[r], rounded)) << "not the f32 rank-order sum rounded once";
    EXPECT_TRUE(same_bytes(results[r], results[0])) << "ranks disagree";
    EXPECT_LE(mxmoe::testing::rel_error(results[r], exact), inputs[0].dtype() == DType::f32 ? 0.0 : 0x1p-8);
  }
}

}  // namespace

TEST(CpuCommunicator, AllReduceIsTheRankOrderF32SumOnEveryRank) {
  std::mt19937_64 rng(fresh_seed());
  for (int size : {1, 2, 4})
    for (DType dtype : {DType::f32, DType::bf16}) {
      SCOPED_TRACE(cat(size, " ranks, ", dtype_name(dtype)));
      std::vector<Tensor> inputs, xs;  // [37, 19] each
      for (int r = 0; r < size; ++r) {
        inputs.push_back(random_tensor({37, 19}, dtype, rng, 1.f + float(r), 0.25f * float(r + 1)));
        xs.push_back(clone(inputs.back()));
      }
      auto comms = CpuCommunicator::create_group(size);
      run_ranks(comms, [&](CpuCommunicator& c) { c.all_reduce_sum(xs[size_t(c.rank())], nullptr); });
      if (size == 1) {
        EXPECT_TRUE(same_bytes(xs[0], inputs[0]));
      } else {
        expect_reduced(inputs, xs);
      }
    }
}

TEST(CpuCommunicator, AllGatherConcatenatesInRankOrder) {
  std::mt19937_64 rng(fresh_seed());
  for (int size : {2, 3, 4})
    for (DType dtype : {DType::f32, DType::bf16})
      for (bool in_place : {false, true}) {
        SCOPED_TRACE(cat(size, " ranks, ", dtype_name(dtype), in_place ? ", in place" : ""));
        std::vector<Tensor> ins, outs;  // in [3, 5, 2] -> out [3·size, 5, 2]
        for (int r = 0; r < size; ++r) {
          ins.push_back(random_tensor({3, 5, 2}, dtype, rng));
          outs.push_back(poisoned({3 * size, 5, 2}, dtype));
          if (in_place) outs.back().slice(3 * r, 3 * r + 3).copy_from(ins.back());
        }
        auto comms = CpuCommunicator::create_group(size);
        run_ranks(comms, [&](CpuCommunicator& c) {
          const int r = c.rank();
          c.all_gather(in_place ? outs[size_t(r)].slice(3 * r, 3 * r + 3) : ins[size_t(r)], outs[size_t(r)], nullptr);
        });
        for (int r = 0; r < size; ++r)
          for (int src = 0; src < size; ++src)
            EXPECT_TRUE(same_bytes(outs[size_t(r)].slice(3 * src, 3 * src + 3), ins[size_t(src)]))
                << "rank " << r << ": slot " << src;
      }
}

TEST(CpuCommunicator, ManyCallsOfDifferentSizesDoNotCrossTalk) {
  std::mt19937_64 rng(fresh_seed());
  constexpr int kSize = 4, kCalls = 300;
  // Call k: all_gather when k % 3 == 0, else all_reduce_sum; [n_k, 3] with n_k from 1 to 41.
  std::vector<std::vector<Tensor>> ins(kCalls), results(kCalls);  // [call][rank]
  for (int k = 0; k < kCalls; ++k) {
    const int64_t n = 1 + (k * 7) % 41;
    const DType dtype = k % 2 ? DType::bf16 : DType::f32;
    for (int r = 0; r < kSize; ++r) {
      ins[size_t(k)].push_back(random_tensor({n, 3}, dtype, rng, 1.f, float(r)));
      results[size_t(k)].push_back(k % 3 == 0 ? poisoned({kSize * n, 3}, dtype) : clone(ins[size_t(k)].back()));
    }
  }
  auto comms = CpuCommunicator::create_group(kSize);
  run_ranks(comms, [&](CpuCommunicator& c) {
    const size_t r = size_t(c.rank());
    for (size_t k = 0; k < kCalls; ++k) {
      if (k % 3 == 0) c.all_gather(ins[k][r], results[k][r], nullptr);
      else c.all_reduce_sum(results[k][r], nullptr);
    }
  });
  for (int k = 0; k < kCalls; ++k) {
    SCOPED_TRACE(cat("call ", k));
    const auto& in = ins[size_t(k)];
    if (k % 3 != 0) {
      expect_reduced(in, results[size_t(k)]);
      continue;
    }
    const int64_t n = in[0].size(0);
    for (int r = 0; r < kSize; ++r)
      for (int src = 0; src < kSize; ++src)
        EXPECT_TRUE(same_bytes(results[size_t(k)][size_t(r)].slice(n * src, n * (src + 1)), in[size_t(src)]));
  }
}

TEST(CpuCommunicator, MismatchedCallsFailOnEveryRankAndTheGroupGoesOn) {
  std::mt19937_64 rng(fresh_seed());
  struct Case {
    const char* name;
    std::function<void(CpuCommunicator&)> call;
    std::vector<std::string> expect;  // in every rank's message
  };
  const auto bf16_rows = [](int r) { return Tensor::empty({4, 8 + r}, DType::bf16, Device::cpu); };
  const std::vector<Case> cases = {
      {"numel", [&](CpuCommunicator& c) { c.all_reduce_sum(bf16_rows(c.rank()), nullptr); },
       {"all_reduce_sum called with mismatched tensors", "rank 0 bf16 [4, 8]", "rank 1 bf16 [4, 9]"}},
      {"dtype",
       [&](CpuCommunicator& c) {
         c.all_reduce_sum(Tensor::empty({4, 8}, c.rank() ? DType::f32 : DType::bf16, Device::cpu), nullptr);
       },
       {"all_reduce_sum called with mismatched tensors", "rank 0 bf16 [4, 8]", "rank 1 f32 [4, 8]"}},
      {"collective",
       [&](CpuCommunicator& c) {
         Tensor x = bf16_rows(0);
         if (c.rank() == 0) c.all_reduce_sum(x, nullptr);
         else c.all_gather(x, Tensor::empty({8, 8}, DType::bf16, Device::cpu), nullptr);
       },
       {"ranks called different collectives", "rank 0 all_reduce_sum", "rank 1 all_gather"}},
      {"bad dtype on one rank",
       [&](CpuCommunicator& c) {
         c.all_reduce_sum(Tensor::empty({4, 8}, c.rank() ? DType::f16 : DType::bf16, Device::cpu), nullptr);
       },
       {"all_reduce_sum: bad argument", "rank 1: x has dtype f16"}},
      {"gather output shape",
       [&](CpuCommunicator& c) {
         c.all_gather(bf16_rows(0), Tensor::empty({c.rank() ? 9 : 8, 8}, DType::bf16, Device::cpu), nullptr);
       },
       {"all_gather: bad argument", "rank 1: out bf16 [9, 8] does not fit", "want [8, 8]"}},
  };
  for (const Case& tc : cases) {
    SCOPED_TRACE(tc.name);
    auto comms = CpuCommunicator::create_group(2);
    std::vector<std::string> errors(2);
    std::vector<Tensor> inputs = {random_tensor({16}, DType::f32, rng), random_tensor({16}, DType::f32, rng)};
    std::vector<Tensor> xs = {clone(inputs[0]), clone(inputs[1])};
    run_ranks(comms, [&](CpuCommunicator& c) {
      errors[size_t(c.rank())] = error_of([&] { tc.call(c); });
      c.all_reduce_sum(xs[size_t(c.rank())], nullptr);  // still usable
    });
    for (int r = 0; r < 2; ++r) {
      EXPECT_NE(errors[size_t(r)].find(cat("cpu communicator rank ", r, ": ")), std::string::npos) << errors[size_t(r)];
      for (const std::string& part : tc.expect) EXPECT_NE(errors[size_t(r)].find(part), std::string::npos) << errors[size_t(r)];
    }
    expect_reduced(inputs, xs);
  }
}

TEST(CpuCommunicator, AbortWakesTheWaitingRanks) {
  auto comms = CpuCommunicator::create_group(3);  // default timeout (minutes): only the abort can wake them
  std::vector<std::string> errors(3);
  const auto start = Clock::now();
  std::vector<std::thread> waiters;
  for (int r : {1, 2})
    waiters.emplace_back([&, r] {
      Tensor x = Tensor::empty({8}, DType::f32, Device::cpu);
      errors[size_t(r)] = error_of([&] { comms[size_t(r)]->all_reduce_sum(x, nullptr); });
    });
  std::this_thread::sleep_for(50ms);
  comms[0]->abort("rank 0 failed: boom");
  for (auto& t : waiters) t.join();
  EXPECT_LT(Clock::now() - start, 5s);
  for (int r : {1, 2}) {
    EXPECT_NE(errors[size_t(r)].find(cat("cpu communicator rank ", r, ", all_reduce_sum: group aborted: rank 0 failed: boom")),
              std::string::npos)
        << errors[size_t(r)];
  }
  // An aborted group fails at once from then on.
  Tensor x = Tensor::empty({8}, DType::f32, Device::cpu);
  EXPECT_NE(error_of([&] { comms[0]->all_reduce_sum(x, nullptr); }).find("group aborted: rank 0 failed: boom"),
            std::string::npos);
}

TEST(CpuCommunicator, RunRanksRethrowsTheRootCauseWithoutHanging) {
  auto comms = CpuCommunicator::create_group(4);
  const auto start = Clock::now();
  const std::string error = error_of([&] {
    run_ranks(comms, [](CpuCommunicator& c) {
      if (c.rank() == 2) fail("rank 2 exploded");
      Tensor x = Tensor::empty({8}, DType::f32, Device::cpu);
      c.all_reduce_sum(x, nullptr);
    });
  });
  EXPECT_EQ(error, "rank 2 exploded");
  EXPECT_LT(Clock::now() - start, 5s);
}

TEST(CpuCommunicator, TimeoutIsTheLastResort) {
  auto comms = CpuCommunicator::create_group(2, {.timeout = 100ms});
  Tensor x = Tensor::empty({8}, DType::f32, Device::cpu);
  const auto start = Clock::now();
  const std::string error = error_of([&] { comms[0]->all_reduce_sum(x, nullptr); });  // rank 1 never comes
  EXPECT_LT(Clock::now() - start, 3s);
  EXPECT_NE(error.find("rank 0 waited 100 ms in all_reduce_sum for the other ranks (1 of 2 arrived)"), std::string::npos)
      << error;
  EXPECT_NE(error_of([&] { comms[1]->all_reduce_sum(x, nullptr); }).find("group aborted"), std::string::npos);
}

// ---- TCP bootstrap ----------------------------------------------------------------------------

namespace {

BootstrapBlob random_blob(std::mt19937_64& rng) {
  BootstrapBlob b;
  for (auto& x : b) x = uint8_t(rng());
  return b;
}

uint16_t free_port() {  // bound once and released: free a moment ago
  BootstrapServer probe(0);
  return probe.port();
}

// A plain TCP listener on 127.0.0.1 that plays a wrong node 0.
class RawListener {
 public:
  RawListener() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&a), len) != 0 || ::listen(fd_, 4) != 0 ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0)
      fail("test listener: ", std::strerror(errno));
    port_ = ntohs(a.sin_port);
  }
  ~RawListener() { ::close(fd_); }
  uint16_t port() const { return port_; }
  int accept() const { return ::accept(fd_, nullptr, nullptr); }

 private:
  int fd_;
  uint16_t port_;
};

int raw_connect(uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) fail("test connect: ", std::strerror(errno));
  return fd;
}

void raw_send(int fd, const std::vector<uint8_t>& bytes) {
  ASSERT_EQ(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL), ssize_t(bytes.size()));
}

// A wrong node 0 that reads the 20-byte hello, answers `reply` and closes.
std::string receive_from_fake_server(const std::vector<uint8_t>& reply) {
  RawListener fake;
  std::thread server([&] {
    const int c = fake.accept();
    uint8_t hello[20];
    ::recv(c, hello, sizeof hello, MSG_WAITALL);
    raw_send(c, reply);
    ::close(c);
  });
  const std::string error = error_of([&] { bootstrap_receive({"127.0.0.1", fake.port()}, 2, 1, 1, 5s); });
  server.join();
  return error;
}

}  // namespace

TEST(TcpBootstrap, ParsesHostPort) {
  const HostPort a = parse_host_port("node0:29500");
  EXPECT_EQ(a.host, "node0");
  EXPECT_EQ(a.port, 29500);
  const HostPort b = parse_host_port("10.1.2.3:1");
  EXPECT_EQ(b.host, "10.1.2.3");
  EXPECT_EQ(b.port, 1);
  for (const char* bad : {"", "node0", ":29500", "node0:", "node0:abc", "node0:70000", "node0:0", "node0:29500x",
                          "node0:-1", "[::1]:29500", "::1:29500", "node 0:29500"}) {
    const std::string error = error_of([&] { parse_host_port(bad); });
    EXPECT_NE(error.find(cat("bad address '", bad, "'")), std::string::npos) << bad << " -> " << error;
  }
  EXPECT_NE(error_of([] { make_dist_init("node0:29500", 0, 0); }).find("--nnodes must be >= 1"), std::string::npos);
  EXPECT_NE(error_of([] { make_dist_init("node0:29500", 2, 2); }).find("--node-rank 2 is out of range 0..1"), std::string::npos);
  EXPECT_NE(error_of([] { make_dist_init("node0:29500", 2, -1); }).find("--node-rank -1"), std::string::npos);
  const DistInit d = make_dist_init("node0:29500", 4, 3);
  EXPECT_EQ(d.addr.host, "node0");
  EXPECT_EQ(d.nnodes, 4);
  EXPECT_EQ(d.node_rank, 3);
}

TEST(TcpBootstrap, ThreeNodesOnLoopbackGetNodeZerosBlob) {
  std::mt19937_64 rng(fresh_seed());
  const BootstrapBlob blob = random_blob(rng);
  // The other nodes start first and retry until node 0 listens; "localhost" goes through getaddrinfo.
  const std::string addr = cat("localhost:", free_port());
  std::vector<BootstrapBlob> got(3);
  std::vector<std::string> errors(3);
  std::atomic<int> made{0};
  std::vector<std::thread> nodes;
  for (int r : {2, 1, 0}) {
    nodes.emplace_back([&, r] {
      DistInit init = make_dist_init(addr, 3, r);
      init.timeout = 10s;
      errors[size_t(r)] = error_of([&] {
        got[size_t(r)] = tcp_bootstrap(init, 2, [&] {
          ++made;
          return blob;
        });
      });
    });
    if (r == 1) std::this_thread::sleep_for(300ms);
  }
  for (auto& t : nodes) t.join();
  EXPECT_EQ(made, 1);
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(errors[size_t(r)], "(no error)");
    EXPECT_EQ(got[size_t(r)], blob) << "node " << r;
  }
}

TEST(TcpBootstrap, OneNodeOpensNoSocket) {
  std::mt19937_64 rng(fresh_seed());
  const BootstrapBlob blob = random_blob(rng);
  EXPECT_EQ(tcp_bootstrap(make_dist_init("127.0.0.1:1", 1, 0), 8, [&] { return blob; }), blob);
}

TEST(TcpBootstrap, PortInUseIsAnError) {
  BootstrapServer first(0);
  EXPECT_NE(error_of([&] { BootstrapServer second(first.port()); }).find(cat("node 0 cannot listen on port ", first.port())),
            std::string::npos);
}

TEST(TcpBootstrap, WrongMagicFromNodeZeroIsAnError) {
  const std::string error = receive_from_fake_server(std::vector<uint8_t>(144, 'X'));
  EXPECT_NE(error.find("wrong magic 0x58585858"), std::string::npos) << error;
  EXPECT_NE(error.find("tcp bootstrap node 1 -> 127.0.0.1:"), std::string::npos) << error;
}

TEST(TcpBootstrap, ShortReplyIsAnError) {
  const std::string error = receive_from_fake_server(std::vector<uint8_t>(10, 0));
  EXPECT_NE(error.find("connection closed after 10 of 144 bytes"), std::string::npos) << error;
}

TEST(TcpBootstrap, WrongMagicFromAPeerIsAnError) {
  std::mt19937_64 rng(fresh_seed());
  BootstrapServer server(0);
  std::string error;
  std::thread node0([&] { error = error_of([&] { server.serve(random_blob(rng), 2, 1, 5s); }); });
  const int c = raw_connect(server.port());
  raw_send(c, std::vector<uint8_t>(20, 'Y'));
  node0.join();
  ::close(c);
  EXPECT_NE(error.find("wrong magic 0x59595959"), std::string::npos) << error;
  EXPECT_NE(error.find(cat("tcp bootstrap node 0 (port ", server.port(), "), peer 127.0.0.1:")), std::string::npos) << error;
}

TEST(TcpBootstrap, MismatchedLaunchFailsOnBothSides) {
  std::mt19937_64 rng(fresh_seed());
  BootstrapServer server(0);
  std::string server_error;
  std::thread node0([&] { server_error = error_of([&] { server.serve(random_blob(rng), 2, 4, 5s); }); });
  const std::string error = error_of([&] { bootstrap_receive({"127.0.0.1", server.port()}, 3, 1, 4, 5s); });
  node0.join();
  for (const std::string& e : {error, server_error})
    EXPECT_NE(e.find("launch mismatch: node 0 has --nnodes 2 and 4 ranks per node, this node 3 and 4"), std::string::npos) << e;
}

TEST(TcpBootstrap, TimeoutsAreErrorsNotHangs) {
  std::mt19937_64 rng(fresh_seed());
  const auto start = Clock::now();
  // Nobody listens: connection refused, retried until the deadline.
  const uint16_t closed = free_port();
  std::string error = error_of([&] { bootstrap_receive({"127.0.0.1", closed}, 2, 1, 1, 300ms); });
  EXPECT_NE(error.find(cat("127.0.0.1:", closed, ": could not connect within 300 ms (last error: Connection refused)")),
            std::string::npos)
      << error;
  // Node 0 waits for nodes that never come.
  BootstrapServer server(0);
  error = error_of([&] { server.serve(random_blob(rng), 3, 1, 200ms); });
  EXPECT_NE(error.find("timed out after 200 ms with 0 of 2 nodes connected (missing node ranks 1, 2)"), std::string::npos)
      << error;
  // A peer that accepts and never answers.
  RawListener silent;
  error = error_of([&] { bootstrap_receive({"127.0.0.1", silent.port()}, 2, 1, 1, 300ms); });
  EXPECT_NE(error.find("timed out after receiving 0 of 144 bytes"), std::string::npos) << error;
  EXPECT_LT(Clock::now() - start, 5s);
}
