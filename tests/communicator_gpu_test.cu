// The NCCL communicator on real GPUs: world size 1 on GPU 0 (all-reduce leaves data unchanged,
// all-gather copies), built directly, through the TCP bootstrap, and from a real ncclUniqueId sent
// between two threads over loopback; collectives captured in a CUDA graph and replayed on fresh
// data; and, when the machine has two GPUs, a two-rank all-reduce and all-gather against the sum
// computed on the host.
#include <gtest/gtest.h>

#include <cstring>
#include <thread>

#include "engine/cuda_check.h"
#include "engine/error.h"
#include "engine/nccl_communicator.h"
#include "engine/stream.h"
#include "multi_gpu_util.h"
#include "test_util.h"

using namespace mxmoe;
using mxmoe::testing::error_of;
using mxmoe::testing::fresh_seed;
using mxmoe::testing::on_each_gpu;
using mxmoe::testing::random_tensor;
using mxmoe::testing::same_bytes;
using namespace std::chrono_literals;

namespace {

Tensor poisoned_gpu(const Shape& shape, DType dtype) {  // 0xff bytes: NaN in f32 and bf16
  Tensor t = Tensor::empty(shape, dtype, Device::cuda);
  CUDA_CHECK(cudaMemset(t.data(), 0xff, t.nbytes()));
  return t;
}

uint16_t free_port() {  // bound once and released: free a moment ago
  BootstrapServer probe(0);
  return probe.port();
}

// World size 1: all_reduce_sum is the identity and all_gather a copy, bit for bit.
void expect_identity_collectives(Communicator& comm, std::mt19937_64& rng) {
  Stream stream;
  for (DType dtype : {DType::f32, DType::bf16}) {
    SCOPED_TRACE(dtype_name(dtype));
    const Tensor h = random_tensor({33, 65}, dtype, rng);
    const Tensor x = h.to(Device::cuda);
    comm.all_reduce_sum(x, stream);
    const Tensor in = random_tensor({7, 3, 5}, dtype, rng).to(Device::cuda);
    const Tensor out = poisoned_gpu({7, 3, 5}, dtype);
    comm.all_gather(in, out, stream);
    stream.synchronize();
    EXPECT_TRUE(same_bytes(x, h));
    EXPECT_TRUE(same_bytes(out, in));
  }
}

}  // namespace

TEST(CommunicatorGpu, NcclWorldSizeOneCollectivesAreIdentities) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  NcclGroup group({0});
  NcclCommunicator& comm = group.local(0);
  EXPECT_EQ(comm.rank(), 0);
  EXPECT_EQ(comm.size(), 1);
  EXPECT_EQ(comm.device(), 0);
  expect_identity_collectives(comm, rng);

  Stream stream;
  const Tensor host = Tensor::empty({4}, DType::f32, Device::cpu);
  EXPECT_NE(error_of([&] { comm.all_reduce_sum(host, stream); }).find("NCCL all_reduce_sum: x is not a device tensor"),
            std::string::npos);
  const Tensor f16 = Tensor::empty({4}, DType::f16, Device::cuda);
  EXPECT_NE(error_of([&] { comm.all_reduce_sum(f16, stream); }).find("dtype f16 is not supported"), std::string::npos);
  const Tensor in = Tensor::empty({4, 2}, DType::f32, Device::cuda), bad_out = Tensor::empty({5, 2}, DType::f32, Device::cuda);
  EXPECT_NE(error_of([&] { comm.all_gather(in, bad_out, stream); }).find("out f32 [5, 2] does not fit"), std::string::npos);
}

// A failing rank aborts the group (engine/tensor_parallel.cpp): afterwards every collective is a
// clear Error rather than a hang, and destroying the aborted group is safe.
TEST(CommunicatorGpu, NcclAbortedGroupRefusesCollectives) {
  MXMOE_REQUIRE_GPU();
  Stream stream;
  const Tensor x = Tensor::empty({16}, DType::f32, Device::cuda);
  {
    NcclGroup group({0});
    group.local(0).all_reduce_sum(x, stream);
    stream.synchronize();
    group.abort();
    group.abort();  // idempotent
    EXPECT_NE(error_of([&] { group.local(0).all_reduce_sum(x, stream); }).find("aborted"), std::string::npos);
    EXPECT_NE(error_of([&] { group.local(0).all_gather(x, x, stream); }).find("aborted"), std::string::npos);
  }
  NcclGroup fresh({0});  // NCCL is still usable after the aborted group is gone
  fresh.local(0).all_reduce_sum(x, stream);
  stream.synchronize();
}

TEST(CommunicatorGpu, NcclThroughTcpBootstrapWithOneNode) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  NcclGroup group = nccl_group_for_node(make_dist_init(cat("127.0.0.1:", free_port()), 1, 0), {0});
  ASSERT_EQ(group.local_size(), 1);
  expect_identity_collectives(group.local(0), rng);
}

TEST(CommunicatorGpu, NcclUniqueIdTravelsBetweenTwoNodesOverLoopback) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  const std::string addr = cat("127.0.0.1:", free_port());
  BootstrapBlob made{}, got0{}, got1{};
  std::string error1;
  std::thread node1([&] {
    DistInit init = make_dist_init(addr, 2, 1);
    init.timeout = 20s;
    error1 = error_of([&] { got1 = tcp_bootstrap(init, 1, []() -> BootstrapBlob { throw Error("node 1 made a blob"); }); });
  });
  DistInit init = make_dist_init(addr, 2, 0);
  init.timeout = 20s;
  got0 = tcp_bootstrap(init, 1, [&] { return made = to_blob(nccl_unique_id()); });
  node1.join();
  EXPECT_EQ(error1, "(no error)");
  EXPECT_NE(made, BootstrapBlob{});
  EXPECT_EQ(got0, made);
  EXPECT_EQ(got1, made);
  // One GPU: the id node 1 received makes a working world-size-1 communicator (a second rank on
  // the same GPU is not supported by NCCL, so node 0 never joins it).
  NcclCommunicator comm(nccl_id_from_blob(got1), 0, 1, 0);
  expect_identity_collectives(comm, rng);
}

TEST(CommunicatorGpu, NcclCollectivesReplayInACudaGraph) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  NcclGroup group({0});
  NcclCommunicator& comm = group.local(0);
  Stream stream;
  Tensor x = Tensor::empty({128, 40}, DType::bf16, Device::cuda);  // all-reduced in place
  Tensor in = Tensor::empty({64, 32}, DType::f32, Device::cuda);    // gathered into out [64, 32]
  const Tensor out = Tensor::empty({64, 32}, DType::f32, Device::cuda);
  cudaGraph_t graph;
  CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  comm.all_reduce_sum(x, stream);
  comm.all_gather(in, out, stream);
  CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec;
  CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  for (int replay = 0; replay < 3; ++replay) {
    SCOPED_TRACE(cat("replay ", replay));
    const Tensor hx = random_tensor(x.shape(), DType::bf16, rng), hin = random_tensor(in.shape(), DType::f32, rng);
    x.copy_from(hx);
    in.copy_from(hin);
    CUDA_CHECK(cudaMemset(out.data(), 0xff, out.nbytes()));
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaGraphLaunch(exec, stream));
    stream.synchronize();
    EXPECT_TRUE(same_bytes(x, hx));
    EXPECT_TRUE(same_bytes(out, hin));
  }
  CUDA_CHECK(cudaGraphExecDestroy(exec));
  CUDA_CHECK(cudaGraphDestroy(graph));
}

TEST(CommunicatorGpu, NcclTwoGpus) {
  MXMOE_REQUIRE_GPUS(2);  // the 2-rank NCCL path is untested on one GPU
  std::mt19937_64 rng(fresh_seed());
  NcclGroup group({0, 1});
  for (DType dtype : {DType::f32, DType::bf16}) {
    SCOPED_TRACE(dtype_name(dtype));
    // The oracle: two addends, so a + b in f32 is exact and NCCL's result is it rounded once.
    std::vector<Tensor> xs, ins;  // per rank: x [300, 17], in [5, 9]
    for (int r = 0; r < 2; ++r) {
      xs.push_back(random_tensor({300, 17}, dtype, rng, 1.f, float(r)));
      ins.push_back(random_tensor({5, 9}, dtype, rng));
    }
    std::vector<float> sum = to_f32_vector(xs[0]);
    const std::vector<float> x1 = to_f32_vector(xs[1]);
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += x1[i];
    Tensor expect = Tensor::empty(xs[0].shape(), dtype, Device::cpu);
    from_f32_vector(sum, expect);

    std::vector<Tensor> reduced(2), gathered(2);
    const std::vector<std::string> errors = on_each_gpu(2, [&](int r) {
      Stream stream;
      const Tensor x = xs[size_t(r)].to(Device::cuda), in = ins[size_t(r)].to(Device::cuda);
      const Tensor out = poisoned_gpu({10, 9}, dtype);
      group.local(r).all_reduce_sum(x, stream);
      group.local(r).all_gather(in, out, stream);
      stream.synchronize();
      reduced[size_t(r)] = x.to(Device::cpu);
      gathered[size_t(r)] = out.to(Device::cpu);
    });
    for (int r = 0; r < 2; ++r) {
      SCOPED_TRACE(cat("rank ", r));
      ASSERT_EQ(errors[size_t(r)], "(no error)");
      EXPECT_TRUE(same_bytes(reduced[size_t(r)], expect));
      for (int src = 0; src < 2; ++src)
        EXPECT_TRUE(same_bytes(gathered[size_t(r)].slice(5 * src, 5 * src + 5), ins[size_t(src)])) << "slot " << src;
    }
  }
}
