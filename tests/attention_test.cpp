// CPU reference of paged attention: equal to dense causal attention written out independently,
// batch-invariant (a mixed batch equals each sequence alone), decode after prefill equals the last
// row of a longer prefill, and bad shapes are clear errors.
#include <gtest/gtest.h>

#include <cmath>

#include "attention_test_util.h"
#include "engine/error.h"
#include "kernels/attention.h"

using namespace mxmoe;
using namespace mxmoe::testing;

namespace {

// Rows of sequence s gathered from the paged cache: [len, n_kv_heads, head_dim] as f32.
std::vector<float> gather(const Tensor& cache, const AttentionBatch& b, int64_t s, int64_t len) {
  const int64_t heads = cache.size(1), bs = cache.size(2), hd = cache.size(3);
  const std::vector<float> all = to_f32_vector(cache);
  std::vector<float> rows;
  for (int64_t j = 0; j < len; ++j) {
    const int64_t blk = b.block_tables.data_as<int32_t>()[s * b.block_tables.size(1) + j / bs];
    for (int64_t h = 0; h < heads; ++h) {
      const float* src = all.data() + ((blk * heads + h) * bs + j % bs) * hd;
      rows.insert(rows.end(), src, src + hd);
    }
  }
  return rows;
}

}  // namespace

TEST(AttentionRef, EqualsDenseCausalAttention) {
  std::mt19937_64 rng(fresh_seed());
  const int hq = 6, hk = 2, hd = 64, bs = 8;
  const PagedProblem p = make_paged_problem(rng, {21}, {9}, hq, hk, hd, bs);
  Tensor out = Tensor::empty(p.q.shape(), DType::bf16, Device::cpu);
  const float scale = 1.f / std::sqrt(float(hd));
  paged_attention_ref(p.q, p.k_cache, p.v_cache, p.batch, scale, out);
  const std::vector<float> k = gather(p.k_cache, p.batch, 0, 21), v = gather(p.v_cache, p.batch, 0, 21);
  const std::vector<float> q = to_f32_vector(p.q);
  std::vector<float> expect(q.size());
  for (int i = 0; i < 9; ++i) {      // query i is token 12 + i
    for (int h = 0; h < hq; ++h) {
      const int kvh = h / (hq / hk);
      std::vector<double> w;
      for (int j = 0; j <= 12 + i; ++j) {
        double dot = 0;
        for (int d = 0; d < hd; ++d) dot += double(q[size_t((i * hq + h) * hd + d)]) * k[size_t((j * hk + kvh) * hd + d)];
        w.push_back(std::exp(dot * scale));
      }
      double z = 0;
      for (double x : w) z += x;
      for (int d = 0; d < hd; ++d) {
        double o = 0;
        for (size_t j = 0; j < w.size(); ++j) o += w[j] / z * v[(j * size_t(hk) + size_t(kvh)) * size_t(hd) + size_t(d)];
        expect[size_t((i * hq + h) * hd + d)] = float(o);
      }
    }
  }
  Tensor ref = Tensor::empty(p.q.shape(), DType::f32, Device::cpu);
  from_f32_vector(expect, ref);
  EXPECT_LT(rel_error(out, ref), 4e-3);  // bf16 output rounding
}

TEST(AttentionRef, MixedBatchEqualsEachSequenceAlone) {
  std::mt19937_64 rng(fresh_seed());
  const std::vector<int> lens = {5, 40, 33, 1}, qlens = {5, 3, 1, 1};
  const PagedProblem p = make_paged_problem(rng, lens, qlens, 8, 2, 64, 16);
  Tensor out = Tensor::empty(p.q.shape(), DType::bf16, Device::cpu);
  paged_attention_ref(p.q, p.k_cache, p.v_cache, p.batch, 0.125f, out);
  for (int64_t s = 0; s < 4; ++s) {
    const int64_t begin = p.batch.cu_seqlens.data_as<int32_t>()[s], end = p.batch.cu_seqlens.data_as<int32_t>()[s + 1];
    AttentionBatch one{p.batch.block_tables.slice(s, s + 1), Tensor::empty({2}, DType::i32, Device::cpu),
                       p.batch.seq_lens.slice(s, s + 1), lens[size_t(s)]};
    one.cu_seqlens.data_as<int32_t>()[0] = 0;
    one.cu_seqlens.data_as<int32_t>()[1] = int32_t(end - begin);
    Tensor alone = Tensor::empty({end - begin, 8, 64}, DType::bf16, Device::cpu);
    paged_attention_ref(p.q.slice(begin, end), p.k_cache, p.v_cache, one, 0.125f, alone);
    EXPECT_EQ(rel_error(alone, out.slice(begin, end)), 0.0) << "sequence " << s;
  }
  // Decode of the last token of sequence 1 equals the last row of its 3-token prefill.
  AttentionBatch decode{p.batch.block_tables.slice(1, 2), Tensor::empty({2}, DType::i32, Device::cpu),
                        p.batch.seq_lens.slice(1, 2), 40};
  decode.cu_seqlens.data_as<int32_t>()[0] = 0;
  decode.cu_seqlens.data_as<int32_t>()[1] = 1;
  Tensor last = Tensor::empty({1, 8, 64}, DType::bf16, Device::cpu);
  paged_attention_ref(p.q.slice(7, 8), p.k_cache, p.v_cache, decode, 0.125f, last);
  EXPECT_EQ(rel_error(last, out.slice(7, 8)), 0.0);
}

TEST(AttentionRef, BadShapesAreClearErrors) {
  std::mt19937_64 rng(fresh_seed());
  const PagedProblem p = make_paged_problem(rng, {4}, {4}, 6, 4, 64, 4);  // 6 heads over 4 KV heads
  Tensor out = Tensor::empty(p.q.shape(), DType::bf16, Device::cpu);
  EXPECT_THROW(paged_attention_ref(p.q, p.k_cache, p.v_cache, p.batch, 1.f, out), Error);
  const PagedProblem r = make_paged_problem(rng, {4}, {4}, 4, 4, 96, 4);  // head_dim 96
  Tensor out2 = Tensor::empty(r.q.shape(), DType::bf16, Device::cpu);
  EXPECT_THROW(paged_attention_ref(r.q, r.k_cache, r.v_cache, r.batch, 1.f, out2), Error);
}
