// Host side of RoPE: the inverse frequencies of every supported rope type (the RopeConfig comes
// from config.json through loader/rope_config.h), transcribed from transformers' modeling_rope_utils (_compute_*_parameters). Tensor
// arithmetic there is fp32 (torch.float) while scalars are Python doubles; the same split is kept
// here so the frequencies agree to the last bit where the operations allow.
#include <algorithm>
#include <cmath>

#include "engine/error.h"
#include "kernels/rope.h"

namespace mxmoe {

namespace {

// base ** (arange(0, dim, 2) / dim) in fp32, as torch computes it.
std::vector<float> pos_freqs(double base, int dim) {
  std::vector<float> f(size_t(dim / 2));
  for (int i = 0; i < dim / 2; ++i) f[size_t(i)] = std::pow(float(base), float(2 * i) / float(dim));
  return f;
}

std::vector<float> default_inv_freq(double base, int dim) {
  std::vector<float> f = pos_freqs(base, dim);
  for (float& v : f) v = 1.f / v;
  return f;
}

double yarn_mscale(double scale, double mscale) { return scale <= 1 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0; }

RopeFrequencies yarn(const RopeConfig& c) {
  const int dim = c.head_dim;
  const double base = c.theta, factor = c.factor;
  double attention = c.attention_factor;
  if (attention == 0.0) {
    attention = (c.mscale != 0.0 && c.mscale_all_dim != 0.0) ? yarn_mscale(factor, c.mscale) / yarn_mscale(factor, c.mscale_all_dim)
                                                             : yarn_mscale(factor, 1.0);
  }
  const auto correction_dim = [&](double rotations) {
    return (dim * std::log(double(c.original_max_position_embeddings) / (rotations * 2 * M_PI))) / (2 * std::log(base));
  };
  double low = correction_dim(c.beta_fast), high = correction_dim(c.beta_slow);
  if (c.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, double(dim - 1));
  if (low == high) high += 0.001;  // as transformers: prevents a division by zero
  const std::vector<float> pf = pos_freqs(base, dim);
  RopeFrequencies r{std::vector<float>(pf.size()), float(attention)};
  for (size_t i = 0; i < pf.size(); ++i) {
    const float ramp = std::clamp((float(i) - float(low)) / float(high - low), 0.f, 1.f);
    const float extrapolation = 1.f - ramp;  // inv_freq_extrapolation_factor
    const float inter = 1.f / (float(factor) * pf[i]), extra = 1.f / pf[i];
    r.inv_freq[i] = inter * (1.f - extrapolation) + extra * extrapolation;
  }
  return r;
}

std::vector<float> llama3(const RopeConfig& c) {
  std::vector<float> f = default_inv_freq(c.theta, c.head_dim);
  const float factor = float(c.factor), low = float(c.low_freq_factor), high = float(c.high_freq_factor);
  const float old_len = float(c.original_max_position_embeddings);
  const float low_wavelen = float(double(c.original_max_position_embeddings) / c.low_freq_factor);
  const float high_wavelen = float(double(c.original_max_position_embeddings) / c.high_freq_factor);
  for (float& v : f) {
    const float wavelen = float(2 * M_PI) / v;
    const float scaled = wavelen > low_wavelen ? v / factor : v;
    const float smooth = (old_len / wavelen - low) / (high - low);
    const bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
    v = medium ? (1.f - smooth) * scaled / factor + smooth * scaled : scaled;
  }
  return f;
}

}  // namespace


RopeFrequencies rope_frequencies(const RopeConfig& c, int64_t seq_len) {
  MXMOE_CHECK(c.head_dim > 0 && c.head_dim % 2 == 0, "rope_frequencies: head_dim must be positive and even, got ", c.head_dim);
  switch (c.type) {
    case RopeType::default_rope: return {default_inv_freq(c.theta, c.head_dim), 1.f};
    case RopeType::linear: {
      std::vector<float> f = default_inv_freq(c.theta, c.head_dim);
      for (float& v : f) v /= float(c.factor);
      return {f, 1.f};
    }
    case RopeType::dynamic: {
      const double len = double(std::max(seq_len, c.max_position_embeddings));
      const double dim = c.head_dim;
      const double base =
          c.theta * std::pow(c.factor * len / double(c.max_position_embeddings) - (c.factor - 1), dim / (dim - 2));
      return {default_inv_freq(base, c.head_dim), 1.f};
    }
    case RopeType::yarn: return yarn(c);
    case RopeType::llama3: return {llama3(c), 1.f};
  }
  fail("rope_frequencies: bad rope type");
}

}  // namespace mxmoe
