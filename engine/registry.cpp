#include "engine/registry.h"

#include <map>

#include "engine/error.h"
#include "engine/fused_moe_layer.h"
#include "engine/linear.h"

namespace mxmoe {

namespace {

// An explicit table rather than self-registering statics: objects of a static library that
// nothing references are dropped by the linker, and their registrations with them.
using LinearFactory = std::unique_ptr<LinearMethod> (*)(const QuantConfig&);
using MoeFactory = std::unique_ptr<FusedMoEMethod> (*)(const QuantConfig&);

const std::map<std::string, LinearFactory>& linear_factories() {
  static const std::map<std::string, LinearFactory> table = {
      {"bf16", make_bf16_linear_method},
      {"mxfp8", make_mxfp8_linear_method},
  };
  return table;
}

const std::map<std::string, MoeFactory>& moe_factories() {
  static const std::map<std::string, MoeFactory> table = {
      {"bf16", make_bf16_fused_moe_method},
      {"mxfp8", make_mxfp8_fused_moe_method},
  };
  return table;
}

std::string known(LayerKind kind) {
  std::string s;
  for (const std::string& name : registered_schemes(kind)) s += (s.empty() ? "" : ", ") + name;
  return s;
}

const char* kind_name(LayerKind kind) { return kind == LayerKind::linear ? "linear" : "fused MoE"; }

template <class Table>
auto lookup(const Table& table, LayerKind kind, const std::string& scheme, const std::string& layer_name) {
  const auto it = table.find(scheme);
  MXMOE_CHECK(it != table.end(), "unknown quantization scheme '", scheme, "' for ", kind_name(kind), " layer ",
              layer_name, " (known: ", known(kind), ")");
  return it->second;
}

}  // namespace

std::string QuantConfig::scheme_for(LayerRole role) const {
  MXMOE_CHECK(linear_factories().count(scheme), "unknown quantization scheme '", scheme, "' (known: ",
              known(LayerKind::linear), ")");
  switch (role) {
    case LayerRole::embedding:
    case LayerRole::router_gate: return "bf16";
    case LayerRole::lm_head: return quantize_lm_head ? scheme : "bf16";
    case LayerRole::linear:
    case LayerRole::experts: return scheme;
  }
  return scheme;
}

std::vector<std::string> registered_schemes(LayerKind kind) {
  std::vector<std::string> names;
  if (kind == LayerKind::linear)
    for (const auto& entry : linear_factories()) names.push_back(entry.first);
  else
    for (const auto& entry : moe_factories()) names.push_back(entry.first);
  return names;  // std::map keeps them sorted
}

std::unique_ptr<LinearMethod> make_linear_method(const std::string& scheme, const QuantConfig& config,
                                                 const std::string& layer_name) {
  return lookup(linear_factories(), LayerKind::linear, scheme, layer_name)(config);
}

std::unique_ptr<FusedMoEMethod> make_fused_moe_method(const std::string& scheme, const QuantConfig& config,
                                                      const std::string& layer_name) {
  return lookup(moe_factories(), LayerKind::fused_moe, scheme, layer_name)(config);
}

}  // namespace mxmoe
