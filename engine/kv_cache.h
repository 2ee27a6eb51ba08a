#pragma once
// Paged KV cache: per layer one bf16 K pool and one V pool of fixed-size blocks,
//   k(layer), v(layer): [num_blocks, n_kv_heads, block_size, head_dim]
// (a block holds block_size consecutive tokens of one sequence; within it each KV head's rows are
// contiguous, so decode attention streams block_size·head_dim·2 bytes per head at a time).
// Sequences own lists of blocks (their block table); token j of a sequence lives in slot
// block_table[j / block_size] · block_size + j % block_size. This class is the host-side
// allocator; kv_cache_write() (kernels/attention.h) stores new rows at slots on the device.
#include <cstdint>
#include <map>
#include <span>
#include <vector>

#include "engine/tensor.h"

namespace mxmoe {

struct KvCacheConfig {
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int block_size = 16;            // tokens per block (a power of two)
  int64_t num_blocks = 0;         // explicit pool size; 0 = size the pool from free GPU memory
  double memory_fraction = 0.9;   // of the free GPU memory (within the memory cap) when num_blocks == 0
};

class KvCache {
 public:
  // device cuda: pools in GPU memory; cpu: host memory (then num_blocks must be given).
  KvCache(const KvCacheConfig& config, Device device);

  const KvCacheConfig& config() const { return config_; }
  int64_t num_blocks() const { return config_.num_blocks; }
  int64_t free_blocks() const { return int64_t(free_.size()); }
  int block_size() const { return config_.block_size; }
  size_t bytes_per_block() const;  // all layers, K and V
  const Tensor& k(int layer) const;
  const Tensor& v(int layer) const;

  int add_sequence();                       // a new empty sequence; returns its id
  void free_sequence(int seq);              // returns its blocks to the pool
  bool can_append(int seq, int64_t tokens) const;
  // Grows the sequence by `tokens`, taking blocks from the pool as needed. Throws (changing
  // nothing) when the pool cannot hold them.
  void append(int seq, int64_t tokens);
  int64_t length(int seq) const;
  const std::vector<int32_t>& blocks(int seq) const;

  // Cache slots of tokens [begin, end) of a sequence (i32, for kv_cache_write), appended to out.
  void slots(int seq, int64_t begin, int64_t end, std::vector<int32_t>& out) const;
  // Block tables of a batch as one row-major i32 [seqs.size(), max_blocks] array, rows padded
  // with 0 (never read: attention stops at each sequence's length).
  std::vector<int32_t> block_table(std::span<const int> seqs, int64_t max_blocks) const;

 private:
  struct Sequence {
    int64_t length = 0;
    std::vector<int32_t> blocks;
  };
  const Sequence& sequence(int seq) const;
  int64_t blocks_needed(const Sequence& s, int64_t tokens) const;

  KvCacheConfig config_;
  std::vector<Tensor> k_, v_;   // per layer
  std::vector<int32_t> free_;   // free block ids (a stack)
  std::map<int, Sequence> sequences_;
  int next_id_ = 0;
};

}  // namespace mxmoe
