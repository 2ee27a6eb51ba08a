#include "engine/ops.h"

#include "engine/cuda_check.h"
#include "kernels/activation.h"
#include "kernels/embedding.h"
#include "kernels/gated_add.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"

namespace mxmoe::ops {

namespace {
bool on_cpu(const Tensor& t) { return t.device() == Device::cpu; }
}  // namespace

void embedding(const Tensor& ids, const Tensor& table, int64_t vocab_begin, const Tensor& out, cudaStream_t stream) {
  on_cpu(out) ? embedding_ref(ids, table, vocab_begin, out) : mxmoe::embedding(ids, table, vocab_begin, out, stream);
}

void rmsnorm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out, cudaStream_t stream) {
  on_cpu(out) ? rmsnorm_ref(x, weight, eps, out) : mxmoe::rmsnorm(x, weight, eps, out, stream);
}

void add_rmsnorm(const Tensor& residual, const Tensor& x, const Tensor& weight, float eps, const Tensor& out,
                 cudaStream_t stream) {
  on_cpu(out) ? add_rmsnorm_ref(residual, x, weight, eps, out)
              : mxmoe::add_rmsnorm(residual, x, weight, eps, out, stream);
}

void qk_norm_rope_kv_write(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor* q_norm, const Tensor* k_norm,
                           float eps, const Tensor& positions, const Tensor& inv_freq, float attention_scaling,
                           const Tensor& slots, const Tensor& k_cache, const Tensor& v_cache, cudaStream_t stream) {
  if (!on_cpu(q)) {
    mxmoe::qk_norm_rope_kv_write(q, k, v, q_norm, k_norm, eps, positions, inv_freq, attention_scaling, slots, k_cache,
                                 v_cache, stream);
    return;
  }
  MXMOE_CHECK((q_norm == nullptr) == (k_norm == nullptr), "qk_norm_rope_kv_write: give both QK-norm weights or neither");
  if (q_norm) {
    rmsnorm_ref(q, *q_norm, eps, q);
    rmsnorm_ref(k, *k_norm, eps, k);
  }
  rope_ref(q, k, positions, inv_freq, attention_scaling);
  kv_cache_write_ref(k, v, slots, k_cache, v_cache);
}

void silu_mul(const Tensor& gate_up, const Tensor& out, cudaStream_t stream) {
  on_cpu(out) ? silu_mul_ref(gate_up, out) : mxmoe::silu_mul(gate_up, out, stream);
}

void add_sigmoid_gated(const Tensor& out, const Tensor& x, const Tensor& gate, cudaStream_t stream) {
  on_cpu(out) ? add_sigmoid_gated_ref(out, x, gate) : mxmoe::add_sigmoid_gated(out, x, gate, stream);
}

void paged_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const AttentionBatch& batch,
                     float scale, const Tensor& workspace, const Tensor& out, cudaStream_t stream) {
  on_cpu(out) ? paged_attention_ref(q, k_cache, v_cache, batch, scale, out)
              : mxmoe::paged_attention(q, k_cache, v_cache, batch, scale, workspace, out, stream);
}

size_t sampler_input_bytes(int64_t rows, int64_t n_prev) {
  return size_t(rows) * sizeof(SamplingParams) + size_t(rows + 1 + n_prev) * sizeof(int32_t);
}

StagedSamplerInputs sampler_staging(std::byte* staged, int64_t rows, int64_t n_prev) {
  auto* params = reinterpret_cast<SamplingParams*>(staged);
  auto* prev_offsets = reinterpret_cast<int32_t*>(params + rows);
  return {{params, size_t(rows)}, {prev_offsets, size_t(rows + 1)}, {prev_offsets + rows + 1, size_t(n_prev)}};
}

SamplerInputs upload_sampler_inputs(std::byte* staged, int64_t rows, int64_t n_prev, Device device, cudaStream_t stream) {
  const int64_t bytes = int64_t(sampler_input_bytes(rows, n_prev));
  SamplerInputs in;
  std::byte* base = staged;
  if (device == Device::cuda) {
    in.storage = Tensor::empty({bytes}, DType::u8, device);
    in.storage.copy_from(Tensor::wrap(staged, {bytes}, DType::u8, Device::cpu), stream);
    base = in.storage.data_as<std::byte>();
  }
  const StagedSamplerInputs parts = sampler_staging(base, rows, n_prev);  // views only: no access on the host
  in.params = Tensor::wrap(parts.params.data(), {int64_t(parts.params.size_bytes())}, DType::u8, device);
  in.prev_offsets = Tensor::wrap(parts.prev_offsets.data(), {rows + 1}, DType::i32, device);
  in.prev_ids = Tensor::wrap(parts.prev_ids.data(), {n_prev}, DType::i32, device);
  return in;
}

void sample(const Tensor& logits, std::span<const SamplingParams> params, const SamplerInputs& in,
            const Tensor& workspace, const Tensor& tokens, cudaStream_t stream) {
  if (on_cpu(logits)) return sample_ref(logits, params, in.prev_offsets, in.prev_ids, tokens);
  MXMOE_CHECK(in.params.nbytes() == params.size_bytes(), "sample: ", in.params.nbytes(), " bytes of uploaded params for ",
              params.size(), " rows");
  mxmoe::sample(logits, in.params, in.prev_offsets, in.prev_ids, workspace, tokens, stream);
}

}  // namespace mxmoe::ops
