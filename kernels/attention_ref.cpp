// CPU reference of paged causal GQA attention and of the KV-cache write (see attention.h).
#include <algorithm>
#include <cmath>

#include "engine/numerics.h"
#include "kernels/attention.h"
#include "kernels/token_rows.h"

namespace mxmoe {

namespace detail {

AttentionShape check_attention_args(const char* op, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                    const AttentionBatch& b, const Tensor& out, Device device) {
  for (const Tensor* t : {&q, &k_cache, &v_cache, &out}) {
    MXMOE_CHECK(t->dtype() == DType::bf16 && t->device() == device, op, ": q, caches and out must be bf16 on the ",
                device == Device::cuda ? "GPU" : "CPU");
  }
  for (const Tensor* t : {&b.block_tables, &b.cu_seqlens, &b.seq_lens}) {
    MXMOE_CHECK(t->dtype() == DType::i32 && t->device() == device && t->is_contiguous(), op,
                ": block_tables, cu_seqlens and seq_lens must be contiguous i32 on the same device as q");
  }
  MXMOE_CHECK(q.dim() == 3 && out.dim() == 3 && q.shape() == out.shape(), op, ": q ", shape_str(q.shape()), " and out ",
              shape_str(out.shape()), " must be the same [T, n_heads, head_dim]");
  MXMOE_CHECK(k_cache.dim() == 4 && k_cache.shape() == v_cache.shape() && k_cache.is_contiguous() && v_cache.is_contiguous(),
              op, ": caches must be contiguous [num_blocks, n_kv_heads, block_size, head_dim], got ",
              shape_str(k_cache.shape()), " and ", shape_str(v_cache.shape()));
  AttentionShape s{q.size(0), b.seq_lens.numel(), b.block_tables.dim() == 2 ? b.block_tables.size(1) : 0,
                   k_cache.size(0), int(q.size(1)), int(k_cache.size(1)), int(q.size(2)), int(k_cache.size(2))};
  MXMOE_CHECK(k_cache.size(3) == s.head_dim, op, ": cache head_dim ", k_cache.size(3), " != q head_dim ", s.head_dim);
  MXMOE_CHECK(s.head_dim == 64 || s.head_dim == 128 || s.head_dim == 256, op, ": head_dim ", s.head_dim,
              " not supported (64, 128, 256)");
  MXMOE_CHECK(s.n_kv_heads > 0 && s.n_heads % s.n_kv_heads == 0, op, ": n_heads ", s.n_heads,
              " is not a multiple of n_kv_heads ", s.n_kv_heads);
  MXMOE_CHECK(b.block_tables.dim() == 2 && b.block_tables.size(0) == s.num_seqs && b.cu_seqlens.numel() == s.num_seqs + 1,
              op, ": block_tables ", shape_str(b.block_tables.shape()), ", cu_seqlens ", shape_str(b.cu_seqlens.shape()),
              " and seq_lens ", shape_str(b.seq_lens.shape()), " disagree on the number of sequences");
  MXMOE_CHECK(s.tokens == 0 || s.num_seqs > 0, op, ": ", s.tokens, " queries but no sequences");
  MXMOE_CHECK(b.max_seq_len >= 0 && b.max_seq_len <= s.max_blocks * s.block_size, op, ": max_seq_len ", b.max_seq_len,
              " exceeds the block table capacity ", s.max_blocks * s.block_size);
  token_rows(q, op);
  token_rows(out, op);
  return s;
}

void check_kv_write_args(const char* op, const Tensor& k, const Tensor& v, const Tensor& slots, const Tensor& k_cache,
                         const Tensor& v_cache, Device device) {
  for (const Tensor* t : {&k, &v, &k_cache, &v_cache}) {
    MXMOE_CHECK(t->dtype() == DType::bf16 && t->device() == device, op, ": k, v and caches must be bf16 on the ",
                device == Device::cuda ? "GPU" : "CPU");
  }
  MXMOE_CHECK(slots.dtype() == DType::i32 && slots.device() == device && slots.is_contiguous(), op,
              ": slots must be contiguous i32");
  MXMOE_CHECK(k_cache.dim() == 4 && k_cache.shape() == v_cache.shape() && k_cache.is_contiguous() && v_cache.is_contiguous(),
              op, ": caches must be contiguous [num_blocks, n_kv_heads, block_size, head_dim]");
  MXMOE_CHECK(k.dim() == 3 && k.shape() == v.shape() && k.size(1) == k_cache.size(1) && k.size(2) == k_cache.size(3) &&
                  slots.numel() == k.size(0),
              op, ": k ", shape_str(k.shape()), ", v ", shape_str(v.shape()), ", slots ", shape_str(slots.shape()),
              " do not match the cache ", shape_str(k_cache.shape()));
  token_rows(k, op);
  token_rows(v, op);
}

}  // namespace detail

void kv_cache_write_ref(const Tensor& k, const Tensor& v, const Tensor& slots, const Tensor& k_cache, const Tensor& v_cache) {
  detail::check_kv_write_args("kv_cache_write_ref", k, v, slots, k_cache, v_cache, Device::cpu);
  const TokenRows kr = token_rows(k, "k"), vr = token_rows(v, "v");
  const int64_t heads = k_cache.size(1), bs = k_cache.size(2), hd = k_cache.size(3);
  const int64_t capacity = k_cache.size(0) * bs;
  for (int64_t t = 0; t < kr.tokens; ++t) {
    const int64_t slot = slots.data_as<const int32_t>()[t];
    if (slot < 0) continue;
    MXMOE_CHECK(slot < capacity, "kv_cache_write_ref: slot ", slot, " of token ", t, " outside the cache (", capacity,
                " slots)");
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t dst = ((slot / bs * heads + h) * bs + slot % bs) * hd;
      std::copy_n(k.data_as<const uint16_t>() + t * kr.stride + h * hd, hd, k_cache.data_as<uint16_t>() + dst);
      std::copy_n(v.data_as<const uint16_t>() + t * vr.stride + h * hd, hd, v_cache.data_as<uint16_t>() + dst);
    }
  }
}

void paged_attention_ref(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const AttentionBatch& b,
                         float scale, const Tensor& out) {
  const detail::AttentionShape s = detail::check_attention_args("paged_attention_ref", q, k_cache, v_cache, b, out, Device::cpu);
  const int32_t* cu = b.cu_seqlens.data_as<const int32_t>();
  const int32_t* lens = b.seq_lens.data_as<const int32_t>();
  const int32_t* tables = b.block_tables.data_as<const int32_t>();
  const TokenRows qr = token_rows(q, "q"), orows = token_rows(out, "out");
  const int group = s.n_heads / s.n_kv_heads, hd = s.head_dim, bs = s.block_size;
  MXMOE_CHECK(cu[0] == 0 && cu[s.num_seqs] == s.tokens, "paged_attention_ref: cu_seqlens must run from 0 to T = ", s.tokens);
  std::vector<double> scores, acc(static_cast<size_t>(hd));
  for (int64_t seq = 0; seq < s.num_seqs; ++seq) {
    const int64_t q_len = cu[seq + 1] - cu[seq], len = lens[seq];
    MXMOE_CHECK(q_len >= 0 && q_len <= len && len <= b.max_seq_len, "paged_attention_ref: sequence ", seq, " has ", q_len,
                " queries, ", len, " cached tokens, max_seq_len ", b.max_seq_len);
    const int32_t* table = tables + seq * s.max_blocks;
    for (int64_t j = 0; j < q_len; ++j) {
      const int64_t t = cu[seq] + j, pos = len - q_len + j;
      for (int h = 0; h < s.n_heads; ++h) {
        const uint16_t* qv = q.data_as<const uint16_t>() + t * qr.stride + int64_t(h) * hd;
        const int kvh = h / group;
        auto row = [&](const Tensor& cache, int64_t key) {
          const int64_t blk = table[key / bs];
          MXMOE_CHECK(blk >= 0 && blk < s.num_blocks, "paged_attention_ref: block ", blk, " outside the cache");
          return cache.data_as<const uint16_t>() + ((blk * s.n_kv_heads + kvh) * bs + key % bs) * hd;
        };
        scores.assign(size_t(pos + 1), 0.0);
        double m = -INFINITY;
        for (int64_t key = 0; key <= pos; ++key) {
          const uint16_t* kv = row(k_cache, key);
          double dot = 0;
          for (int d = 0; d < hd; ++d) dot += double(bf16_to_f32(qv[d])) * double(bf16_to_f32(kv[d]));
          scores[size_t(key)] = dot * scale;
          m = std::max(m, scores[size_t(key)]);
        }
        double sum = 0;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t key = 0; key <= pos; ++key) {
          const double p = std::exp(scores[size_t(key)] - m);
          sum += p;
          const uint16_t* vv = row(v_cache, key);
          for (int d = 0; d < hd; ++d) acc[size_t(d)] += p * double(bf16_to_f32(vv[d]));
        }
        uint16_t* o = out.data_as<uint16_t>() + t * orows.stride + int64_t(h) * hd;
        for (int d = 0; d < hd; ++d) o[d] = f32_to_bf16(float(acc[size_t(d)] / sum));
      }
    }
  }
}

}  // namespace mxmoe
