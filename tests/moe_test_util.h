#pragma once
// Fused-MoE test fixtures shared by the CPU and GPU tests: random expert weights (bf16 or MXFP8),
// router logits with crafted expert loads, tensor-parallel shards of the weights.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "kernels/fused_moe.h"
#include "tests/test_util.h"

namespace mxmoe::testing {

// How tokens spread over experts.
enum class Load {
  random,         // logits normal(0, 1)
  half_idle,      // only the first max(k, E/4) experts ever win: the others get zero tokens
  one_takes_all,  // expert E-1 is every token's first choice
  ties,           // logits from {0, 1}: many exact ties (lowest index must win)
};

inline std::ostream& operator<<(std::ostream& s, Load l) {
  switch (l) {
    case Load::random: return s << "random";
    case Load::half_idle: return s << "half_idle";
    case Load::one_takes_all: return s << "one_takes_all";
    case Load::ties: return s << "ties";
  }
  return s << "?";
}

// router logits [T, E] f32 on the CPU.
inline Tensor moe_logits(int64_t tokens, int64_t experts, int top_k, Load load, std::mt19937_64& rng) {
  Tensor t = random_tensor({tokens, experts}, DType::f32, rng);
  float* v = t.data_as<float>();
  const int64_t busy = std::max<int64_t>(top_k, experts / 4);
  for (int64_t i = 0; i < tokens; ++i)
    for (int64_t e = 0; e < experts; ++e) {
      float& l = v[i * experts + e];
      switch (load) {
        case Load::random: break;
        case Load::half_idle: if (e >= busy) l -= 30.f; break;
        case Load::one_takes_all: if (e == experts - 1) l += 30.f; break;
        case Load::ties: l = l > 0.f ? 1.f : 0.f; break;
      }
    }
  return t;
}

// Copies rows [r0, r0 + nr) and columns [c0, c0 + nc) of every matrix of a contiguous CPU
// [B, R, C] tensor (any dtype) into `dst` [B, ?, nc] starting at row `dst_row`.
inline void copy_block(const Tensor& src, int64_t r0, int64_t nr, int64_t c0, int64_t nc, const Tensor& dst,
                       int64_t dst_row) {
  const size_t es = dtype_size(src.dtype());
  const int64_t rows = src.size(1), cols = src.size(2), dst_rows = dst.size(1);
  for (int64_t b = 0; b < src.size(0); ++b)
    for (int64_t r = 0; r < nr; ++r)
      std::memcpy(static_cast<char*>(dst.data()) + ((b * dst_rows + dst_row + r) * nc) * es,
                  static_cast<const char*>(src.data()) + ((b * rows + r0 + r) * cols + c0) * es, size_t(nc) * es);
}

// The intermediate-dimension shard `rank` of `ranks` of [E, 2I, H] (gate rows then up rows).
inline Tensor shard_w13(const Tensor& w13, int rank, int ranks) {
  const int64_t inter = w13.size(1) / 2, part = inter / ranks, cols = w13.size(2);
  Tensor out = Tensor::empty({w13.size(0), 2 * part, cols}, w13.dtype(), Device::cpu);
  copy_block(w13, rank * part, part, 0, cols, out, 0);
  copy_block(w13, inter + rank * part, part, 0, cols, out, part);
  return out;
}

// Columns [rank·n, (rank+1)·n) of [E, H, C].
inline Tensor shard_columns(const Tensor& w, int rank, int ranks) {
  const int64_t part = w.size(2) / ranks;
  Tensor out = Tensor::empty({w.size(0), w.size(1), part}, w.dtype(), Device::cpu);
  copy_block(w, 0, w.size(1), rank * part, part, out, 0);
  return out;
}

inline MoeWeights shard_moe_weights(const MoeWeights& w, int rank, int ranks) {
  MoeWeights s;
  if (w.quantized()) {
    s.w13_mx = {shard_w13(w.w13_mx.elems, rank, ranks), shard_w13(w.w13_mx.scales, rank, ranks)};
    s.w2_mx = {shard_columns(w.w2_mx.elems, rank, ranks), shard_columns(w.w2_mx.scales, rank, ranks)};
  } else {
    s.w13 = shard_w13(w.w13, rank, ranks);
    s.w2 = shard_columns(w.w2, rank, ranks);
  }
  return s;
}

// Random CPU expert weights with unit-scale outputs: w13 [E, 2I, H] ~ N(0, 1/H), w2 [E, H, I] ~ N(0, 1/I).
inline MoeWeights random_moe_weights(int64_t experts, int64_t hidden, int64_t inter, bool mxfp8,
                                     std::mt19937_64& rng) {
  Tensor w13 = random_tensor({experts, 2 * inter, hidden}, DType::bf16, rng, 1.f / std::sqrt(float(hidden)));
  Tensor w2 = random_tensor({experts, hidden, inter}, DType::bf16, rng, 1.f / std::sqrt(float(inter)));
  MoeWeights w;
  if (!mxfp8) {
    w.w13 = w13;
    w.w2 = w2;
    return w;
  }
  w.w13_mx = mxfp8_empty(w13.shape(), Device::cpu);
  w.w2_mx = mxfp8_empty(w2.shape(), Device::cpu);
  mxfp8_quantize_ref(w13, w.w13_mx, ScaleRule::rceil);
  mxfp8_quantize_ref(w2, w.w2_mx, ScaleRule::rceil);
  return w;
}

inline MoeWeights moe_weights_to(const MoeWeights& w, Device device) {
  MoeWeights d;
  if (w.quantized()) {
    d.w13_mx = {w.w13_mx.elems.to(device), w.w13_mx.scales.to(device)};
    d.w2_mx = {w.w2_mx.elems.to(device), w.w2_mx.scales.to(device)};
  } else {
    d.w13 = w.w13.to(device);
    d.w2 = w.w2.to(device);
  }
  return d;
}

// Element-wise sum of bf16 CPU tensors, in f32, as an f32 tensor.
inline Tensor sum_f32(const std::vector<Tensor>& parts) {
  std::vector<float> acc(static_cast<size_t>(parts.at(0).numel()), 0.f);
  for (const Tensor& p : parts) {
    const std::vector<float> v = to_f32_vector(p);
    for (size_t i = 0; i < acc.size(); ++i) acc[i] += v[i];
  }
  Tensor out = Tensor::empty(parts[0].shape(), DType::f32, Device::cpu);
  from_f32_vector(acc, out);
  return out;
}

}  // namespace mxmoe::testing
