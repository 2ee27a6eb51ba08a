#pragma once
// A random paged-attention problem for the attention tests and benchmark: sequences with given
// cached lengths and query counts, their blocks scattered over the pool in random order, random
// K/V everywhere (unused blocks too) and random queries. All tensors on the CPU.
#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/attention.h"
#include "test_util.h"

namespace mxmoe::testing {

struct PagedProblem {
  Tensor q;                 // bf16 [T, n_heads, head_dim]
  Tensor k_cache, v_cache;  // bf16 [num_blocks, n_kv_heads, block_size, head_dim]
  AttentionBatch batch;     // i32 tables on the CPU
};

inline PagedProblem make_paged_problem(std::mt19937_64& rng, const std::vector<int>& seq_lens, const std::vector<int>& q_lens,
                                       int n_heads, int n_kv_heads, int head_dim, int block_size, bool random_cache = true) {
  const int64_t seqs = int64_t(seq_lens.size());
  int64_t max_blocks = 1, used = 0, max_len = 0;
  for (int len : seq_lens) {
    max_blocks = std::max<int64_t>(max_blocks, (len + block_size - 1) / block_size);
    used += (len + block_size - 1) / block_size;
    max_len = std::max<int64_t>(max_len, len);
  }
  const int64_t num_blocks = used + 3;
  std::vector<int32_t> perm(static_cast<size_t>(num_blocks));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  PagedProblem p;
  p.batch.block_tables = Tensor::empty({seqs, max_blocks}, DType::i32, Device::cpu);
  p.batch.cu_seqlens = Tensor::empty({seqs + 1}, DType::i32, Device::cpu);
  p.batch.seq_lens = Tensor::empty({seqs}, DType::i32, Device::cpu);
  p.batch.max_seq_len = max_len;
  int32_t* table = p.batch.block_tables.data_as<int32_t>();
  std::fill_n(table, seqs * max_blocks, 0);
  int64_t next = 0, tokens = 0;
  p.batch.cu_seqlens.data_as<int32_t>()[0] = 0;
  for (int64_t s = 0; s < seqs; ++s) {
    for (int64_t b = 0; b < (seq_lens[size_t(s)] + block_size - 1) / block_size; ++b) table[s * max_blocks + b] = perm[size_t(next++)];
    tokens += q_lens[size_t(s)];
    p.batch.cu_seqlens.data_as<int32_t>()[s + 1] = int32_t(tokens);
    p.batch.seq_lens.data_as<int32_t>()[s] = seq_lens[size_t(s)];
  }
  const Shape cache_shape{num_blocks, n_kv_heads, block_size, head_dim};
  p.k_cache = random_cache ? random_tensor(cache_shape, DType::bf16, rng) : Tensor::empty(cache_shape, DType::bf16, Device::cpu);
  p.v_cache = random_cache ? random_tensor(cache_shape, DType::bf16, rng) : Tensor::empty(cache_shape, DType::bf16, Device::cpu);
  p.q = random_tensor({tokens, n_heads, head_dim}, DType::bf16, rng);
  return p;
}

inline AttentionBatch batch_to(const AttentionBatch& b, Device device) {
  return {b.block_tables.to(device), b.cu_seqlens.to(device), b.seq_lens.to(device), b.max_seq_len};
}

}  // namespace mxmoe::testing
