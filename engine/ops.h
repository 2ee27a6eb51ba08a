#pragma once
// The per-token ops a model is built from, dispatched by the tensors' device: CPU tensors run
// the reference implementations, CUDA tensors the kernels (asynchronous on `stream`). Models call
// these and the layers' forward(), never a kernel directly, so one model file serves both backends.
#include <cuda_runtime.h>

#include <span>

#include "engine/tensor.h"
#include "kernels/attention.h"
#include "kernels/sampling.h"

namespace mxmoe::ops {

void embedding(const Tensor& ids, const Tensor& table, int64_t vocab_begin, const Tensor& out, cudaStream_t stream);
void rmsnorm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out, cudaStream_t stream);
void add_rmsnorm(const Tensor& residual, const Tensor& x, const Tensor& weight, float eps, const Tensor& out,
                 cudaStream_t stream);
// The attention block's per-head QK-norm (q_norm/k_norm, or both nullptr) + rope + KV-cache write
// (kernels/rope.h): one launch on the GPU, the separate reference ops on the CPU.
void qk_norm_rope_kv_write(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor* q_norm, const Tensor* k_norm,
                           float eps, const Tensor& positions, const Tensor& inv_freq, float attention_scaling,
                           const Tensor& slots, const Tensor& k_cache, const Tensor& v_cache, cudaStream_t stream);
void silu_mul(const Tensor& gate_up, const Tensor& out, cudaStream_t stream);
// out[t, :] += sigmoid(gate[t]) · x[t, :] (Qwen2-MoE's shared expert), bf16 rounding as Hugging Face.
void add_sigmoid_gated(const Tensor& out, const Tensor& x, const Tensor& gate, cudaStream_t stream);
// workspace: GPU only (paged_attention_workspace_bytes); ignored on the CPU.
void paged_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const AttentionBatch& batch,
                     float scale, const Tensor& workspace, const Tensor& out, cudaStream_t stream);
// The sampler's per-row inputs, staged on the host as params [B] | prev_offsets [B + 1] |
// prev_ids [n] (the repetition penalty's history) and viewed where sampling runs: on the GPU one
// buffer filled by one copy (each small copy between a step's kernels costs it microseconds).
struct SamplerInputs {
  Tensor params;        // u8 [B · sizeof(SamplingParams)]
  Tensor prev_offsets;  // i32 [B + 1]
  Tensor prev_ids;      // i32 [n]
  Tensor storage;       // the GPU buffer they live in (undefined on the CPU: they view `staged`)
};
size_t sampler_input_bytes(int64_t rows, int64_t n_prev);
// The three parts of a staging buffer (sampler_input_bytes long, 4-byte aligned), to fill in place.
struct StagedSamplerInputs {
  std::span<SamplingParams> params;
  std::span<int32_t> prev_offsets, prev_ids;
};
StagedSamplerInputs sampler_staging(std::byte* staged, int64_t rows, int64_t n_prev);
// `staged` must stay put until the copy is done (pinned memory lets it overlap the step).
SamplerInputs upload_sampler_inputs(std::byte* staged, int64_t rows, int64_t n_prev, Device device, cudaStream_t stream);
// params: the rows' SamplingParams on the host (the CPU path reads them); `in` as uploaded.
void sample(const Tensor& logits, std::span<const SamplingParams> params, const SamplerInputs& in,
            const Tensor& workspace, const Tensor& tokens, cudaStream_t stream);

}  // namespace mxmoe::ops
