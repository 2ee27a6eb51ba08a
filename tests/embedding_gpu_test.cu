// Embedding gather vs the CPU reference, including a vocab-parallel shard (rows outside it are 0).
#include <gtest/gtest.h>

#include <cstring>

#include "engine/stream.h"
#include "kernels/embedding.h"
#include "test_util.h"

using namespace mxmoe;

TEST(EmbeddingGpu, MatchesReferenceForFullTableAndShard) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(mxmoe::testing::fresh_seed());
  const Tensor table = mxmoe::testing::random_tensor({1000, 64}, DType::bf16, rng);
  Tensor ids = Tensor::empty({37}, DType::i32, Device::cpu);
  for (int i = 0; i < 37; ++i) ids.data_as<int32_t>()[i] = int32_t(rng() % 1000);
  Stream stream;
  for (auto [begin, rows] : {std::pair<int64_t, int64_t>{0, 1000}, {500, 500}}) {
    const Tensor shard = table.slice(begin, begin + rows);
    Tensor ref = Tensor::empty({37, 64}, DType::bf16, Device::cpu);
    embedding_ref(ids, shard, begin, ref);
    Tensor got = Tensor::empty({37, 64}, DType::bf16, Device::cuda);
    CUDA_CHECK(cudaMemset(got.data(), 0xff, got.nbytes()));
    embedding(ids.to(Device::cuda), shard.to(Device::cuda), begin, got, stream);
    stream.synchronize();
    const Tensor host = got.to(Device::cpu);
    ASSERT_EQ(0, std::memcmp(host.data(), ref.data(), ref.nbytes())) << "shard at " << begin;
  }
}
