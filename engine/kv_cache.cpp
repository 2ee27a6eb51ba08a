// Paged KV cache allocator (see kv_cache.h).
#include "engine/kv_cache.h"

#include <cuda_runtime.h>

#include "engine/cuda_check.h"
#include "engine/error.h"
#include "engine/log.h"
#include "engine/memory.h"

namespace mxmoe {

KvCache::KvCache(const KvCacheConfig& config, Device device) : config_(config) {
  MXMOE_CHECK(config.num_layers > 0 && config.num_kv_heads > 0 && config.head_dim > 0 && config.block_size > 0,
              "kv cache: layers (", config.num_layers, "), kv heads (", config.num_kv_heads, "), head_dim (",
              config.head_dim, ") and block_size (", config.block_size, ") must be positive");
  MXMOE_CHECK((config.block_size & (config.block_size - 1)) == 0, "kv cache: block_size must be a power of two, got ",
              config.block_size);
  MXMOE_CHECK(config.num_blocks >= 0, "kv cache: num_blocks must be >= 0, got ", config.num_blocks);
  if (config_.num_blocks == 0) {
    MXMOE_CHECK(device == Device::cuda, "kv cache: a CPU cache needs an explicit number of blocks");
    MXMOE_CHECK(config.memory_fraction > 0 && config.memory_fraction <= 1,
                "kv cache: memory_fraction must be in (0, 1], got ", config.memory_fraction);
    size_t free_bytes = 0, total = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total));
    const DeviceMemoryStats stats = device_memory_stats(current_device());
    if (stats.limit > 0) free_bytes = std::min(free_bytes, stats.limit > stats.in_use ? stats.limit - stats.in_use : 0);
    config_.num_blocks = int64_t(double(free_bytes) * config.memory_fraction) / int64_t(bytes_per_block());
    MXMOE_CHECK(config_.num_blocks > 0, "kv cache: no room for a single block (", bytes_per_block(), " bytes) in ",
                free_bytes, " free bytes x fraction ", config.memory_fraction);
  }
  MXMOE_CHECK(config_.num_blocks <= INT32_MAX / config_.block_size, "kv cache: ", config_.num_blocks,
              " blocks overflow the i32 slot index");
  const Shape shape{config_.num_blocks, config.num_kv_heads, config.block_size, config.head_dim};
  for (int l = 0; l < config.num_layers; ++l) {
    k_.push_back(Tensor::empty(shape, DType::bf16, device));
    v_.push_back(Tensor::empty(shape, DType::bf16, device));
  }
  free_.reserve(size_t(config_.num_blocks));
  for (int64_t b = config_.num_blocks - 1; b >= 0; --b) free_.push_back(int32_t(b));  // block 0 handed out first
  log_info("kv cache: ", config_.num_blocks, " blocks of ", config.block_size, " tokens (",
           double(bytes_per_block()) * double(config_.num_blocks) / double(1 << 20), " MiB)");
}

size_t KvCache::bytes_per_block() const {
  return size_t(config_.num_layers) * 2 * size_t(config_.num_kv_heads) * size_t(config_.block_size) *
         size_t(config_.head_dim) * dtype_size(DType::bf16);
}

const Tensor& KvCache::k(int layer) const {
  MXMOE_CHECK(layer >= 0 && layer < config_.num_layers, "kv cache: layer ", layer, " out of range");
  return k_[size_t(layer)];
}

const Tensor& KvCache::v(int layer) const {
  MXMOE_CHECK(layer >= 0 && layer < config_.num_layers, "kv cache: layer ", layer, " out of range");
  return v_[size_t(layer)];
}

int KvCache::add_sequence() {
  sequences_.emplace(next_id_, Sequence{});
  return next_id_++;
}

const KvCache::Sequence& KvCache::sequence(int seq) const {
  const auto it = sequences_.find(seq);
  MXMOE_CHECK(it != sequences_.end(), "kv cache: unknown sequence id ", seq);
  return it->second;
}

void KvCache::free_sequence(int seq) {
  const Sequence& s = sequence(seq);
  free_.insert(free_.end(), s.blocks.rbegin(), s.blocks.rend());
  sequences_.erase(seq);
}

int64_t KvCache::blocks_needed(const Sequence& s, int64_t tokens) const {
  MXMOE_CHECK(tokens >= 0, "kv cache: cannot append ", tokens, " tokens");
  const int64_t total = (s.length + tokens + config_.block_size - 1) / config_.block_size;
  return total - int64_t(s.blocks.size());
}

bool KvCache::can_append(int seq, int64_t tokens) const {
  return blocks_needed(sequence(seq), tokens) <= free_blocks();
}

void KvCache::append(int seq, int64_t tokens) {
  const int64_t need = blocks_needed(sequence(seq), tokens);
  MXMOE_CHECK(need <= free_blocks(), "kv cache: pool exhausted: sequence ", seq, " needs ", need,
              " more blocks for ", tokens, " tokens but only ", free_blocks(), " of ", num_blocks(), " are free");
  Sequence& s = sequences_.at(seq);
  for (int64_t i = 0; i < need; ++i) {
    s.blocks.push_back(free_.back());
    free_.pop_back();
  }
  s.length += tokens;
}

int64_t KvCache::length(int seq) const { return sequence(seq).length; }

const std::vector<int32_t>& KvCache::blocks(int seq) const { return sequence(seq).blocks; }

void KvCache::slots(int seq, int64_t begin, int64_t end, std::vector<int32_t>& out) const {
  const Sequence& s = sequence(seq);
  MXMOE_CHECK(begin >= 0 && begin <= end && end <= s.length, "kv cache: tokens [", begin, ", ", end,
              ") outside sequence ", seq, " of length ", s.length);
  for (int64_t j = begin; j < end; ++j) {
    out.push_back(s.blocks[size_t(j / config_.block_size)] * config_.block_size + int32_t(j % config_.block_size));
  }
}

std::vector<int32_t> KvCache::block_table(std::span<const int> seqs, int64_t max_blocks) const {
  std::vector<int32_t> table(seqs.size() * size_t(max_blocks), 0);
  for (size_t i = 0; i < seqs.size(); ++i) {
    const Sequence& s = sequence(seqs[i]);
    MXMOE_CHECK(int64_t(s.blocks.size()) <= max_blocks, "kv cache: sequence ", seqs[i], " has ", s.blocks.size(),
                " blocks, more than the table width ", max_blocks);
    std::copy(s.blocks.begin(), s.blocks.end(), table.begin() + int64_t(i) * max_blocks);
  }
  return table;
}

}  // namespace mxmoe
