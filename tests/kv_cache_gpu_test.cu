// KV cache pools on the GPU: sized from free memory (a fraction of it, within the memory cap) or
// given explicitly; exhaustion is a clear error.
#include <gtest/gtest.h>

#include "engine/cuda_check.h"
#include "engine/error.h"
#include "engine/kv_cache.h"
#include "test_util.h"

using namespace mxmoe;

TEST(KvCacheGpu, PoolFromFreeMemoryFraction) {
  MXMOE_REQUIRE_GPU();
  size_t free_bytes = 0, total = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total));
  const KvCacheConfig config{.num_layers = 48, .num_kv_heads = 4, .head_dim = 128, .block_size = 16, .memory_fraction = 0.05};
  KvCache cache(config, Device::cuda);
  const double expect = double(free_bytes) * 0.05 / double(cache.bytes_per_block());
  EXPECT_NEAR(double(cache.num_blocks()), expect, expect * 0.02 + 2);
  EXPECT_EQ(cache.k(47).device(), Device::cuda);
  const int s = cache.add_sequence();
  cache.append(s, cache.num_blocks() * 16);
  EXPECT_EQ(cache.free_blocks(), 0);
  EXPECT_THROW(cache.append(s, 1), Error);
}

TEST(KvCacheGpu, ExplicitBlocksAndMemoryCap) {
  MXMOE_REQUIRE_GPU();
  KvCache cache({.num_layers = 2, .num_kv_heads = 8, .head_dim = 128, .block_size = 32, .num_blocks = 100}, Device::cuda);
  EXPECT_EQ(cache.num_blocks(), 100);
  EXPECT_EQ(cache.v(1).shape(), (Shape{100, 8, 32, 128}));
  const int dev = current_device();
  set_device_memory_limit(dev, device_memory_stats(dev).in_use + (size_t(1) << 20));  // 1 MiB headroom
  KvCache capped({.num_layers = 1, .num_kv_heads = 1, .head_dim = 128, .block_size = 16, .memory_fraction = 1.0}, Device::cuda);
  EXPECT_LE(capped.num_blocks() * int64_t(capped.bytes_per_block()), int64_t(1) << 20);
  set_device_memory_limit(dev, 0);
}
