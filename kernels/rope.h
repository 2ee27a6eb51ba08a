#pragma once
// Rotary position embedding, neox / rotate_half style (Hugging Face Llama, Qwen, Mixtral, OLMoE):
//   x[i]     <- x[i]·cos(p·f_i) − x[i+h]·sin(p·f_i)
//   x[i+h]   <- x[i+h]·cos(p·f_i) + x[i]·sin(p·f_i)        i < h = head_dim/2
// applied in place to q [T, n_heads, head_dim] and k [T, n_kv_heads, head_dim] at positions p
// (i32 [T]). Rounding follows Hugging Face on bf16 tensors: cos/sin are computed in fp32 (times
// the attention scaling), cast to bf16, and each product and the sum are rounded to bf16.
//
// The inverse frequencies f (fp32 [head_dim/2]) are computed once on the host by
// rope_frequencies(), the single place that implements the rope_scaling types exactly as
// transformers' modeling_rope_utils does: default, linear, dynamic (NTK), yarn, llama3.
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "engine/tensor.h"

namespace mxmoe {

enum class RopeType : uint8_t { default_rope, linear, dynamic, yarn, llama3 };

struct RopeConfig {
  RopeType type = RopeType::default_rope;
  double theta = 10000.0;                    // rope_theta
  int head_dim = 0;                          // rotary dimension (partial rotary is not supported)
  int64_t max_position_embeddings = 0;
  double factor = 1.0;                       // linear, dynamic, yarn, llama3
  int64_t original_max_position_embeddings = 0;  // yarn, llama3
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3
  double beta_fast = 32.0, beta_slow = 1.0;  // yarn
  double attention_factor = 0.0;             // yarn: 0 = derived from factor / mscale / mscale_all_dim
  double mscale = 0.0, mscale_all_dim = 0.0; // yarn
  bool truncate = true;                      // yarn
};

struct RopeFrequencies {
  std::vector<float> inv_freq;    // [head_dim/2]
  float attention_scaling = 1.f;  // multiplies cos and sin (yarn's mscale; 1 otherwise)
};

// seq_len: only used by dynamic NTK scaling, which rescales the base once the sequence grows past
// max_position_embeddings (transformers recomputes it in forward with seq_len = max position + 1).
RopeFrequencies rope_frequencies(const RopeConfig& config, int64_t seq_len = 0);

// q: bf16 [T, n_heads, head_dim], k: bf16 [T, n_kv_heads, head_dim] (token rows, dimension 0 may be
// strided); positions: i32 [T]; inv_freq: f32 [head_dim/2]. CUDA: device tensors, asynchronous.
void rope(const Tensor& q, const Tensor& k, const Tensor& positions, const Tensor& inv_freq, float attention_scaling,
          cudaStream_t stream);
void rope_ref(const Tensor& q, const Tensor& k, const Tensor& positions, const Tensor& inv_freq,
              float attention_scaling);  // CPU tensors

// The attention block's per-token chain on q, k and v in one launch (decode runs it once per layer):
//   optional per-head RMSNorm of q and k (Qwen3's q_norm / k_norm; as rmsnorm on each head row),
//   rope on q and k (as rope above), then k and v stored at cache slots[t] (as kv_cache_write).
// q and k are updated in place (k too, so the result equals the separate calls). q_norm, k_norm:
// bf16 [head_dim] on the GPU, or both nullptr for no QK-norm. head_dim ∈ {64, 128, 256}. CUDA only
// (the CPU backend runs the separate reference ops). Launched with programmatic dependent launch
// (kernels/pdl.cuh): q_norm, k_norm and inv_freq are read before waiting for the previous kernel
// on the stream, which must not write them.
void qk_norm_rope_kv_write(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor* q_norm, const Tensor* k_norm,
                           float eps, const Tensor& positions, const Tensor& inv_freq, float attention_scaling,
                           const Tensor& slots, const Tensor& k_cache, const Tensor& v_cache, cudaStream_t stream);

namespace detail {
void check_rope_args(const char* op, const Tensor& q, const Tensor& k, const Tensor& positions, const Tensor& inv_freq,
                     Device device);
}  // namespace detail

}  // namespace mxmoe
