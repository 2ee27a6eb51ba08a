// CPU references of the sampler (see sampling.h): the kernel's algorithm on one row, and Hugging
// Face's filters computed independently with a full sort.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/error.h"
#include "kernels/matmul_ref.h"
#include "kernels/sampling.h"

namespace mxmoe {

using namespace sampling_detail;

void check_sampling_params(const SamplingParams& p) {
  MXMOE_CHECK(std::isfinite(p.temperature) && p.temperature >= 0.f, "sampling: temperature must be >= 0, got ", p.temperature);
  MXMOE_CHECK(p.top_k >= 0, "sampling: top_k must be >= 0, got ", p.top_k);
  MXMOE_CHECK(p.top_p > 0.f && p.top_p <= 1.f, "sampling: top_p must be in (0, 1], got ", p.top_p);
  MXMOE_CHECK(p.min_p >= 0.f && p.min_p <= 1.f, "sampling: min_p must be in [0, 1], got ", p.min_p);
  MXMOE_CHECK(std::isfinite(p.repetition_penalty) && p.repetition_penalty > 0.f,
              "sampling: repetition_penalty must be > 0, got ", p.repetition_penalty);
}

namespace {

std::vector<float> penalized_logits(std::span<const float> logits, const SamplingParams& p, std::span<const int32_t> prev) {
  std::vector<float> x(logits.begin(), logits.end());
  if (p.repetition_penalty != 1.f) {
    for (const int32_t id : prev) {
      if (id >= 0 && size_t(id) < x.size()) x[size_t(id)] = penalized(logits[size_t(id)], p.repetition_penalty);
    }
  }
  return x;
}

int32_t argmax(const std::vector<float>& x) {
  return int32_t(std::max_element(x.begin(), x.end()) - x.begin());  // first of equal maxima
}

}  // namespace

int32_t sample_row_ref(std::span<const float> logits, const SamplingParams& p, std::span<const int32_t> prev) {
  std::vector<float> x = penalized_logits(logits, p, prev);
  if (p.temperature == 0.f) return argmax(x);
  const int64_t n = int64_t(x.size());
  for (float& v : x) v = v / p.temperature;
  const float m = *std::max_element(x.begin(), x.end());
  std::vector<uint32_t> keys(x.size());
  std::vector<float> e(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    keys[i] = order_key(x[i]);
    e[i] = std::exp(x[i] - m);
  }
  std::vector<int64_t> order(x.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return keys[size_t(a)] > keys[size_t(b)]; });
  uint32_t top_k_key = 0, top_p_key = 0;
  if (p.top_k > 0 && p.top_k < n) top_k_key = keys[size_t(order[size_t(p.top_k - 1)])];
  if (p.top_p < 1.f) {
    uint64_t total = 0;
    for (size_t i = 0; i < x.size(); ++i) total += keys[i] >= top_k_key ? fixed_mass(e[i]) : 0;
    const uint64_t target = std::max<uint64_t>(1, uint64_t(double(p.top_p) * double(total)));
    uint64_t cum = 0;
    for (const int64_t i : order) {
      if (keys[size_t(i)] < top_k_key) break;
      cum += fixed_mass(e[size_t(i)]);
      if (cum >= target) {
        top_p_key = keys[size_t(i)];
        break;
      }
    }
  }
  const auto kept = [&](size_t i) { return keys[i] >= top_k_key && keys[i] >= top_p_key && e[i] >= p.min_p; };
  uint64_t total = 0;
  for (size_t i = 0; i < x.size(); ++i) total += kept(i) ? fixed_mass(e[i]) : 0;
  if (total == 0) return argmax(x);
  const uint64_t r = mul_hi64(total, sampling_random(p.seed, p.step));
  uint64_t cum = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    cum += kept(i) ? fixed_mass(e[i]) : 0;
    if (cum > r) return int32_t(i);
  }
  return argmax(x);  // unreachable: cum reaches total > r
}

std::vector<double> sampling_distribution_ref(std::span<const float> logits, const SamplingParams& p,
                                              std::span<const int32_t> prev) {
  std::vector<float> x = penalized_logits(logits, p, prev);
  const size_t n = x.size();
  std::vector<double> probs(n, 0.0);
  if (p.temperature == 0.f) {
    probs[size_t(argmax(x))] = 1.0;
    return probs;
  }
  for (float& v : x) v = v / p.temperature;
  std::vector<bool> removed(n, false);
  const auto softmax = [&] {
    double m = -INFINITY, z = 0;
    for (size_t i = 0; i < n; ++i) if (!removed[i]) m = std::max(m, double(x[i]));
    for (size_t i = 0; i < n; ++i) z += removed[i] ? 0.0 : std::exp(double(x[i]) - m);
    for (size_t i = 0; i < n; ++i) probs[i] = removed[i] ? 0.0 : std::exp(double(x[i]) - m) / z;
  };
  if (p.top_k > 0) {  // TopKLogitsWarper: remove scores < the k-th largest
    std::vector<float> sorted = x;
    const size_t k = std::min(size_t(p.top_k), n);
    std::nth_element(sorted.begin(), sorted.begin() + int64_t(k - 1), sorted.end(), std::greater<>());
    for (size_t i = 0; i < n; ++i) removed[i] = removed[i] || x[i] < sorted[k - 1];
  }
  if (p.top_p < 1.f) {  // TopPLogitsWarper: ascending sort, remove where cumsum <= 1 - top_p, keep the top one
    softmax();
    std::vector<size_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return x[a] < x[b]; });
    double cum = 0;
    for (size_t j = 0; j + 1 < n; ++j) {
      cum += probs[order[j]];
      if (cum <= 1.0 - double(p.top_p)) removed[order[j]] = true;
    }
    // torch.sort is not stable, so which of several tokens tied with the smallest kept logit
    // transformers keeps is unspecified; like the kernel, keep them all.
    float boundary = INFINITY;
    for (size_t i = 0; i < n; ++i)
      if (!removed[i]) boundary = std::min(boundary, x[i]);
    for (size_t i = 0; i < n; ++i)
      if (x[i] == boundary) removed[i] = false;
  }
  if (p.min_p > 0.f) {  // MinPLogitsWarper: remove probs < min_p · max prob
    softmax();
    const double top = *std::max_element(probs.begin(), probs.end());
    for (size_t i = 0; i < n; ++i) removed[i] = removed[i] || probs[i] < double(p.min_p) * top;
  }
  softmax();
  return probs;
}

void sample_ref(const Tensor& logits, std::span<const SamplingParams> params, const Tensor& prev_offsets,
                const Tensor& prev_ids, const Tensor& tokens) {
  MXMOE_CHECK(logits.dim() == 2 && logits.is_contiguous() && logits.device() == Device::cpu, "sample_ref: logits must be a contiguous CPU [B, V]");
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  MXMOE_CHECK(int64_t(params.size()) == rows && prev_offsets.numel() == rows + 1 && tokens.numel() == rows &&
                  tokens.dtype() == DType::i32 && prev_offsets.dtype() == DType::i32 && prev_ids.dtype() == DType::i32,
              "sample_ref: ", rows, " rows need ", rows, " params, i32 prev_offsets [B+1] and i32 tokens [B]");
  const std::vector<float> all = to_f32_vector(logits);
  const int32_t* off = prev_offsets.data_as<const int32_t>();
  for (int64_t b = 0; b < rows; ++b) {
    check_sampling_params(params[size_t(b)]);
    const std::span<const float> row(all.data() + b * vocab, size_t(vocab));
    const std::span<const int32_t> prev(prev_ids.data_as<const int32_t>() + off[b], size_t(off[b + 1] - off[b]));
    tokens.data_as<int32_t>()[b] = sample_row_ref(row, params[size_t(b)], prev);
  }
}

}  // namespace mxmoe
