#pragma once
// config.json -> ModelConfig, read as Hugging Face transformers reads it (model_type selects the
// config class; absent optional fields take that class's defaults). The fields that decide
// tensor shapes (hidden_size, num_hidden_layers, num_attention_heads, vocab_size, the MLP and
// expert sizes) are required: a config without them cannot describe a checkpoint. A missing,
// mistyped or inconsistent field is an Error naming the field and the file.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "engine/dtype.h"
#include "kernels/rope.h"

namespace mxmoe {

struct ModelConfig {
  std::string file;          // where it was read from (for messages)
  std::string model_type;    // "qwen3_moe", "mixtral", "olmoe", "qwen2_moe", "llama", "qwen2", "qwen3"
  std::string architecture;  // architectures[0], e.g. "Qwen3MoeForCausalLM" (may be empty)

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;  // dense MLP width (Qwen2-MoE/Qwen3-MoE: layers in mlp_only_layers)
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // defaults to num_attention_heads
  int64_t head_dim = 0;             // defaults to hidden_size / num_attention_heads (qwen3: 128)
  double rms_norm_eps = 0;
  RopeConfig rope;  // rope_theta + rope_scaling (or rope_parameters), loader/rope_config.h
  int64_t max_position_embeddings = 0;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;     // q/k/v projections have a bias (qwen2, qwen2_moe; attention_bias elsewhere)
  bool o_proj_bias = false;  // attention_bias for llama/qwen3/qwen3_moe/olmoe
  std::optional<double> clip_qkv;  // olmoe: clamp q/k/v to ±clip_qkv
  std::vector<int64_t> bos_token_ids, eos_token_ids;  // int or list in the file; may be empty
  DType dtype = DType::f32;  // torch_dtype / dtype ("bfloat16", ...); transformers' default is float32

  // Mixture of experts (num_experts == 0: dense model).
  int64_t num_experts = 0;           // num_experts, or num_local_experts (mixtral)
  int64_t num_experts_per_tok = 0;
  int64_t moe_intermediate_size = 0; // per-expert width (mixtral: intermediate_size; olmoe: intermediate_size)
  int64_t shared_expert_intermediate_size = 0;  // qwen2_moe (0: none)
  bool norm_topk_prob = false;       // renormalise the top-k router weights (mixtral: always true)
  int64_t decoder_sparse_step = 1;
  std::vector<int64_t> mlp_only_layers;

  bool is_moe() const { return num_experts > 0; }
  bool is_moe_layer(int64_t layer) const;  // as the model classes decide it
};

ModelConfig parse_model_config(const nlohmann::json& json, const std::string& file);
// path: a config.json, or a directory holding one.
ModelConfig load_model_config(const std::string& path);

const std::vector<std::string>& supported_model_types();

}  // namespace mxmoe
