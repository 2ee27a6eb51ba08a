#include "loader/model_config.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/error.h"
#include "loader/json_ints.h"
#include "loader/rope_config.h"

namespace mxmoe {

namespace {

using nlohmann::json;

// Typed access to config.json fields; every error names the field and the file.
class Fields {
 public:
  Fields(const json& j, const std::string& file) : j_(j), file_(file) {}

  // null counts as absent, as in transformers (e.g. "rope_scaling": null).
  bool has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }

  [[noreturn]] void bad(const char* key, const char* what) const {
    fail(file_, ": field \"", key, "\" ", what, has(key) ? cat(", got ", j_[key].dump()) : std::string());
  }

  int64_t integer(const char* key) const {
    if (!has(key)) bad(key, "is missing (the model's tensor shapes depend on it)");
    if (!j_[key].is_number_integer()) bad(key, "must be an integer");
    return j_[key].get<int64_t>();
  }
  int64_t integer(const char* key, int64_t fallback) const { return has(key) ? integer(key) : fallback; }
  int64_t positive(const char* key) const {
    const int64_t v = integer(key);
    if (v <= 0) bad(key, "must be positive");
    return v;
  }
  int64_t positive(const char* key, int64_t fallback) const { return has(key) ? positive(key) : fallback; }

  double number(const char* key) const {
    if (!has(key)) bad(key, "is missing");
    if (!j_[key].is_number()) bad(key, "must be a number");
    return j_[key].get<double>();
  }
  double number(const char* key, double fallback) const { return has(key) ? number(key) : fallback; }
  std::optional<double> optional_number(const char* key) const {
    return has(key) ? std::optional<double>(number(key)) : std::nullopt;
  }

  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_boolean()) bad(key, "must be true or false");
    return j_[key].get<bool>();
  }

  std::string string(const char* key) const {
    if (!has(key)) bad(key, "is missing");
    if (!j_[key].is_string()) bad(key, "must be a string");
    return j_[key].get<std::string>();
  }

  // An int, a list of ints, or absent/null (then `fallback`).
  std::vector<int64_t> ints(const char* key, std::vector<int64_t> fallback) const {
    if (!has(key)) return fallback;
    const std::optional<std::vector<int64_t>> values = int_or_int_list(j_[key]);
    if (!values) bad(key, "must be an integer or a list of integers");
    return *values;
  }

  const json& raw(const char* key) const { return j_[key]; }
  const std::string& file() const { return file_; }

 private:
  const json& j_;
  const std::string& file_;
};

// transformers' defaults for the fields a config.json may omit, per config class.
struct TypeDefaults {
  const char* model_type;
  std::optional<int64_t> num_key_value_heads;  // empty: num_attention_heads
  std::optional<int64_t> head_dim;             // empty: hidden_size / num_attention_heads
  double rms_norm_eps, rope_theta;
  int64_t max_position_embeddings;
  std::vector<int64_t> bos, eos;
  bool moe;
};

const TypeDefaults kTypes[] = {
    {"qwen3_moe", 4, std::nullopt, 1e-6, 10000.0, 32768, {}, {}, true},
    {"mixtral", 8, std::nullopt, 1e-5, 1e6, 4096 * 32, {1}, {2}, true},
    {"olmoe", std::nullopt, std::nullopt, 1e-5, 10000.0, 4096, {}, {50279}, true},
    {"qwen2_moe", 16, std::nullopt, 1e-6, 10000.0, 32768, {}, {}, true},
    {"llama", std::nullopt, std::nullopt, 1e-6, 10000.0, 2048, {1}, {2}, false},
    {"qwen2", 32, std::nullopt, 1e-6, 10000.0, 32768, {}, {}, false},
    {"qwen3", 32, 128, 1e-6, 10000.0, 32768, {}, {}, false},
};

std::string supported_list() {
  std::string s;
  for (const std::string& t : supported_model_types()) s += (s.empty() ? "" : ", ") + t;
  return s;
}

DType parse_dtype(const Fields& f) {
  const char* key = f.has("dtype") ? "dtype" : "torch_dtype";  // transformers >= 4.56 writes "dtype"
  if (!f.has(key)) return DType::f32;
  const std::string name = f.string(key);
  if (name == "bfloat16") return DType::bf16;
  if (name == "float16" || name == "half") return DType::f16;
  if (name == "float32" || name == "float") return DType::f32;
  f.bad(key, "must be bfloat16, float16 or float32");
}

}  // namespace

const std::vector<std::string>& supported_model_types() {
  static const std::vector<std::string> types = [] {
    std::vector<std::string> t;
    for (const TypeDefaults& d : kTypes) t.push_back(d.model_type);
    return t;
  }();
  return types;
}

bool ModelConfig::is_moe_layer(int64_t layer) const {
  if (!is_moe()) return false;
  if (std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer) != mlp_only_layers.end()) return false;
  return (layer + 1) % decoder_sparse_step == 0;
}

ModelConfig parse_model_config(const json& j, const std::string& file) {
  MXMOE_CHECK(j.is_object(), file, ": config must be a JSON object");
  const Fields f(j, file);
  ModelConfig c;
  c.file = file;
  if (!f.has("model_type")) f.bad("model_type", cat("is missing (supported: ", supported_list(), ")").c_str());
  c.model_type = f.string("model_type");
  const auto type = std::find_if(std::begin(kTypes), std::end(kTypes),
                                 [&](const TypeDefaults& d) { return c.model_type == d.model_type; });
  MXMOE_CHECK(type != std::end(kTypes), file, ": unsupported model_type \"", c.model_type,
              "\" (supported: ", supported_list(), ")");
  if (f.has("architectures")) {
    const json& a = f.raw("architectures");
    if (!a.is_array() || (!a.empty() && !a[0].is_string())) f.bad("architectures", "must be a list of strings");
    if (!a.empty()) c.architecture = a[0].get<std::string>();
  }

  c.vocab_size = f.positive("vocab_size");
  c.hidden_size = f.positive("hidden_size");
  c.num_hidden_layers = f.positive("num_hidden_layers");
  c.num_attention_heads = f.positive("num_attention_heads");
  c.num_key_value_heads = f.positive("num_key_value_heads", type->num_key_value_heads.value_or(c.num_attention_heads));
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    f.bad("num_key_value_heads", cat("must divide num_attention_heads (", c.num_attention_heads, ")").c_str());
  if (!f.has("head_dim") && !type->head_dim && c.hidden_size % c.num_attention_heads != 0)
    f.bad("hidden_size", cat("must be a multiple of num_attention_heads (", c.num_attention_heads,
                             ") when head_dim is not given").c_str());
  c.head_dim = f.positive("head_dim", type->head_dim.value_or(c.hidden_size / c.num_attention_heads));
  c.rms_norm_eps = f.number("rms_norm_eps", type->rms_norm_eps);
  if (!(c.rms_norm_eps > 0)) f.bad("rms_norm_eps", "must be positive");
  c.max_position_embeddings = f.positive("max_position_embeddings", type->max_position_embeddings);
  try {
    c.rope = parse_rope_config(j, int(c.head_dim), type->rope_theta, c.max_position_embeddings);
  } catch (const Error& e) {
    fail(file, ": ", e.what());
  }
  if (!(c.rope.theta > 0)) f.bad("rope_theta", "must be positive");
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);
  const bool qwen2_family = c.model_type == "qwen2" || c.model_type == "qwen2_moe";
  const bool attention_bias = f.boolean("attention_bias", false);
  c.qkv_bias = qwen2_family || attention_bias;  // Qwen2 always has q/k/v biases
  c.o_proj_bias = !qwen2_family && attention_bias;
  c.clip_qkv = c.model_type == "olmoe" ? f.optional_number("clip_qkv") : std::nullopt;
  if (c.clip_qkv && !(*c.clip_qkv > 0)) f.bad("clip_qkv", "must be positive");
  c.bos_token_ids = f.ints("bos_token_id", type->bos);
  c.eos_token_ids = f.ints("eos_token_id", type->eos);
  c.dtype = parse_dtype(f);

  if (type->moe) {
    if (c.model_type == "mixtral") {
      c.num_experts = f.positive("num_local_experts");
      c.moe_intermediate_size = f.positive("intermediate_size");
      c.norm_topk_prob = true;  // Mixtral's router always renormalises its top-k
    } else if (c.model_type == "olmoe") {
      c.num_experts = f.positive("num_experts");
      c.moe_intermediate_size = f.positive("intermediate_size");
      c.norm_topk_prob = f.boolean("norm_topk_prob", false);
    } else {  // qwen2_moe, qwen3_moe
      // transformers >= 5 writes Qwen3-MoE's expert count as num_local_experts (its attribute_map
      // keeps num_experts as an alias); published checkpoints use num_experts.
      c.num_experts = f.has("num_experts") || !f.has("num_local_experts") ? f.positive("num_experts")
                                                                          : f.positive("num_local_experts");
      c.moe_intermediate_size = f.positive("moe_intermediate_size");
      c.norm_topk_prob = f.boolean("norm_topk_prob", false);
      c.decoder_sparse_step = f.positive("decoder_sparse_step", 1);
      if (f.has("mlp_only_layers")) c.mlp_only_layers = f.ints("mlp_only_layers", {});
      for (int64_t l : c.mlp_only_layers)
        if (l < 0 || l >= c.num_hidden_layers) f.bad("mlp_only_layers", "lists a layer outside [0, num_hidden_layers)");
      if (c.model_type == "qwen2_moe") c.shared_expert_intermediate_size = f.positive("shared_expert_intermediate_size");
    }
    c.num_experts_per_tok = f.positive("num_experts_per_tok");
    if (c.num_experts_per_tok > c.num_experts)
      f.bad("num_experts_per_tok", cat("exceeds the number of experts (", c.num_experts, ")").c_str());
  }
  // The dense MLP width matters when some layer is dense.
  bool has_dense_layer = !c.is_moe();
  for (int64_t l = 0; l < c.num_hidden_layers && !has_dense_layer; ++l) has_dense_layer = !c.is_moe_layer(l);
  c.intermediate_size = has_dense_layer ? f.positive("intermediate_size") : f.positive("intermediate_size", 0);
  return c;
}

ModelConfig load_model_config(const std::string& path) {
  namespace fs = std::filesystem;
  const std::string file = fs::is_directory(path) ? (fs::path(path) / "config.json").string() : path;
  std::ifstream in(file);
  MXMOE_CHECK(in, file, ": cannot open");
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    fail(file, ": not valid JSON: ", e.what());
  }
  return parse_model_config(j, file);
}

}  // namespace mxmoe
