// The embedding reference: rows are copied exactly; ids outside the shard give zero rows.
#include <gtest/gtest.h>

#include "engine/error.h"
#include "kernels/embedding.h"
#include "test_util.h"

using namespace mxmoe;

TEST(EmbeddingRef, CopiesRowsAndZeroesOtherShards) {
  std::mt19937_64 rng(mxmoe::testing::fresh_seed());
  const Tensor table = mxmoe::testing::random_tensor({10, 16}, DType::bf16, rng);
  Tensor ids = Tensor::empty({3}, DType::i32, Device::cpu);
  ids.data_as<int32_t>()[0] = 7;
  ids.data_as<int32_t>()[1] = 2;
  ids.data_as<int32_t>()[2] = 9;
  Tensor out = Tensor::empty({3, 16}, DType::bf16, Device::cpu);
  embedding_ref(ids, table.slice(5, 10), 5, out);  // shard holding rows 5..9
  const auto* o = out.data_as<uint16_t>();
  const auto* t = table.data_as<uint16_t>();
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(o[j], t[7 * 16 + j]);
    EXPECT_EQ(o[16 + j], 0);
    EXPECT_EQ(o[32 + j], t[9 * 16 + j]);
  }
  EXPECT_THROW(embedding_ref(ids, table, 0, Tensor::empty({3, 8}, DType::bf16, Device::cpu)), Error);
}
