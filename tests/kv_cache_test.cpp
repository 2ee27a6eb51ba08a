// Paged KV cache allocator (CPU pool): block accounting, slots, block tables, exhaustion errors
// that change nothing, and the reference write at slots.
#include <gtest/gtest.h>

#include "engine/error.h"
#include "engine/kv_cache.h"
#include "kernels/attention.h"
#include "test_util.h"

using namespace mxmoe;
using mxmoe::testing::fresh_seed;
using mxmoe::testing::random_tensor;

namespace {
KvCacheConfig small_config() { return {.num_layers = 2, .num_kv_heads = 2, .head_dim = 8, .block_size = 4, .num_blocks = 6}; }
}  // namespace

TEST(KvCache, AppendAllocatesBlocksAndSlotsFollowTheTable) {
  KvCache cache(small_config(), Device::cpu);
  EXPECT_EQ(cache.k(1).shape(), (Shape{6, 2, 4, 8}));
  EXPECT_EQ(cache.bytes_per_block(), size_t(2 * 2 * 2 * 4 * 8 * 2));
  const int a = cache.add_sequence(), b = cache.add_sequence();
  cache.append(a, 5);  // 2 blocks
  cache.append(b, 1);  // 1 block
  cache.append(a, 3);  // still 2 blocks (8 tokens)
  EXPECT_EQ(cache.length(a), 8);
  EXPECT_EQ(cache.blocks(a).size(), 2u);
  EXPECT_EQ(cache.free_blocks(), 3);
  std::vector<int32_t> slots;
  cache.slots(a, 3, 6, slots);
  const auto& blk = cache.blocks(a);
  EXPECT_EQ(slots, (std::vector<int32_t>{blk[0] * 4 + 3, blk[1] * 4 + 0, blk[1] * 4 + 1}));
  const std::vector<int> seqs = {b, a};
  const std::vector<int32_t> table = cache.block_table(seqs, 3);
  EXPECT_EQ(table, (std::vector<int32_t>{cache.blocks(b)[0], 0, 0, blk[0], blk[1], 0}));
  cache.free_sequence(a);
  EXPECT_EQ(cache.free_blocks(), 5);
  EXPECT_THROW(cache.length(a), Error);
}

TEST(KvCache, ExhaustedPoolIsAClearErrorAndChangesNothing) {
  KvCache cache(small_config(), Device::cpu);
  const int a = cache.add_sequence();
  cache.append(a, 20);  // 5 blocks
  EXPECT_FALSE(cache.can_append(a, 5));
  try {
    cache.append(a, 5);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("pool exhausted"), std::string::npos) << e.what();
  }
  EXPECT_EQ(cache.length(a), 20);
  EXPECT_EQ(cache.free_blocks(), 1);
  cache.append(a, 4);
  EXPECT_EQ(cache.free_blocks(), 0);
  EXPECT_THROW(KvCache({.num_layers = 1, .num_kv_heads = 1, .head_dim = 8}, Device::cpu), Error);  // CPU needs num_blocks
  EXPECT_THROW(KvCache({.num_layers = 1, .num_kv_heads = 1, .head_dim = 8, .block_size = 12, .num_blocks = 4}, Device::cpu),
               Error);  // block size must be a power of two
}

TEST(KvCache, WriteRefStoresRowsAtSlots) {
  std::mt19937_64 rng(fresh_seed());
  KvCache cache(small_config(), Device::cpu);
  const int a = cache.add_sequence();
  cache.append(a, 6);
  std::vector<int32_t> slots;
  cache.slots(a, 0, 6, slots);
  slots.push_back(-1);  // a padding token: skipped
  const Tensor k = random_tensor({7, 2, 8}, DType::bf16, rng), v = random_tensor({7, 2, 8}, DType::bf16, rng);
  Tensor s = Tensor::empty({7}, DType::i32, Device::cpu);
  std::copy(slots.begin(), slots.end(), s.data_as<int32_t>());
  kv_cache_write_ref(k, v, s, cache.k(0), cache.v(0));
  for (int t = 0; t < 6; ++t) {
    const int blk = cache.blocks(a)[size_t(t / 4)], off = t % 4;
    for (int h = 0; h < 2; ++h) {
      for (int d = 0; d < 8; ++d) {
        EXPECT_EQ(cache.k(0).data_as<uint16_t>()[((blk * 2 + h) * 4 + off) * 8 + d], k.data_as<uint16_t>()[(t * 2 + h) * 8 + d]);
        EXPECT_EQ(cache.v(0).data_as<uint16_t>()[((blk * 2 + h) * 4 + off) * 8 + d], v.data_as<uint16_t>()[(t * 2 + h) * 8 + d]);
      }
    }
  }
  s.data_as<int32_t>()[0] = 6 * 4;  // one past the pool
  EXPECT_THROW(kv_cache_write_ref(k, v, s, cache.k(0), cache.v(0)), Error);
}
