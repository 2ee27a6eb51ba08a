// config.json -> RopeConfig, as transformers' modeling_rope_utils reads it.
#include "loader/rope_config.h"

#include <nlohmann/json.hpp>

#include "engine/error.h"

namespace mxmoe {

namespace {

double number_or(const nlohmann::json& j, const char* key, double fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  MXMOE_CHECK(j[key].is_number(), "rope config: '", key, "' must be a number, got ", j[key].dump());
  return j[key].get<double>();
}

RopeType rope_type_from_name(const std::string& name) {
  if (name == "default") return RopeType::default_rope;
  if (name == "linear") return RopeType::linear;
  if (name == "dynamic") return RopeType::dynamic;
  if (name == "yarn") return RopeType::yarn;
  if (name == "llama3") return RopeType::llama3;
  fail("rope config: unsupported rope type '", name, "' (supported: default, linear, dynamic, yarn, llama3)");
}

}  // namespace

RopeConfig parse_rope_config(const nlohmann::json& config, int head_dim, double default_theta,
                             int64_t default_max_position_embeddings) {
  RopeConfig c;
  c.head_dim = head_dim;
  MXMOE_CHECK(head_dim > 0 && head_dim % 2 == 0, "rope config: head_dim must be positive and even, got ", head_dim);
  c.max_position_embeddings =
      int64_t(number_or(config, "max_position_embeddings", double(default_max_position_embeddings)));
  // transformers >= 5 writes rope_parameters (with rope_theta inside); older configs rope_scaling.
  nlohmann::json p = nlohmann::json::object();
  if (config.contains("rope_parameters") && config["rope_parameters"].is_object()) p = config["rope_parameters"];
  else if (config.contains("rope_scaling") && config["rope_scaling"].is_object()) p = config["rope_scaling"];
  c.theta = number_or(p, "rope_theta", number_or(config, "rope_theta", default_theta));
  const double partial = number_or(p, "partial_rotary_factor", number_or(config, "partial_rotary_factor", 1.0));
  MXMOE_CHECK(partial == 1.0, "rope config: partial rotary (partial_rotary_factor ", partial, ") is not supported");
  std::string name = "default";
  if (p.contains("rope_type")) name = p["rope_type"].get<std::string>();
  else if (p.contains("type")) name = p["type"].get<std::string>();
  else MXMOE_CHECK(p.empty() || (p.size() == 1 && p.contains("rope_theta")), "rope config: rope_scaling needs rope_type (or type), got ", p.dump());
  c.type = rope_type_from_name(name);
  if (c.type == RopeType::default_rope) return c;

  c.original_max_position_embeddings = int64_t(number_or(
      p, "original_max_position_embeddings", number_or(config, "original_max_position_embeddings", double(c.max_position_embeddings))));
  const double factor = number_or(p, "factor", 0.0);
  if (c.type == RopeType::yarn && factor == 0.0 && c.original_max_position_embeddings > 0) {
    c.factor = double(c.max_position_embeddings) / double(c.original_max_position_embeddings);
  } else {
    MXMOE_CHECK(factor > 0.0, "rope config: rope type '", name, "' needs a positive 'factor'");
    c.factor = factor;
  }
  c.low_freq_factor = number_or(p, "low_freq_factor", c.low_freq_factor);
  c.high_freq_factor = number_or(p, "high_freq_factor", c.high_freq_factor);
  if (c.type == RopeType::llama3) {
    MXMOE_CHECK(p.contains("low_freq_factor") && p.contains("high_freq_factor"),
                "rope config: llama3 needs low_freq_factor and high_freq_factor");
  }
  c.beta_fast = number_or(p, "beta_fast", 0.0);
  if (c.beta_fast == 0.0) c.beta_fast = 32.0;  // transformers: `get("beta_fast") or 32`
  c.beta_slow = number_or(p, "beta_slow", 0.0);
  if (c.beta_slow == 0.0) c.beta_slow = 1.0;
  c.attention_factor = number_or(p, "attention_factor", 0.0);
  c.mscale = number_or(p, "mscale", 0.0);
  c.mscale_all_dim = number_or(p, "mscale_all_dim", 0.0);
  if (p.contains("truncate")) c.truncate = p["truncate"].get<bool>();
  MXMOE_CHECK(c.type != RopeType::dynamic || c.max_position_embeddings > 0,
              "rope config: dynamic scaling needs max_position_embeddings");
  MXMOE_CHECK(c.type != RopeType::yarn && c.type != RopeType::llama3 ? true : c.original_max_position_embeddings > 0,
              "rope config: ", name, " needs original_max_position_embeddings");
  return c;
}

}  // namespace mxmoe
