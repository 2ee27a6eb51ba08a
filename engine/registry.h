#pragma once
// The layer registry: quantization scheme ("bf16", "mxfp8") × layer kind (linear, fused MoE)
// -> a fresh method object (engine/quant_method.h), and the QuantConfig that decides which scheme
// each layer uses.
#include <memory>
#include <string>
#include <vector>

#include "engine/quant_method.h"
#include "kernels/mxfp8_format.h"

namespace mxmoe {

// What a layer is for: some roles keep full precision whatever the scheme.
enum class LayerRole : uint8_t {
  linear,       // attention projections, dense MLPs, shared experts
  experts,      // the routed experts of a fused MoE layer
  embedding,    // token embedding: always bf16 (a table lookup, nothing to gain)
  router_gate,  // MoE router: bf16, f32 logits (routing decisions are precision-sensitive)
  lm_head,      // bf16 unless QuantConfig::quantize_lm_head
};

struct QuantConfig {
  std::string scheme = "mxfp8";   // --quantization mxfp8|bf16
  bool quantize_lm_head = false;  // the LM head follows `scheme` too
  ScaleRule scale_rule = ScaleRule::rceil;
  // Force the MXFP8 linear backend by name ("cublaslt-block-scaled", "w8a16", "dequant-cublaslt";
  // "reference" on the CPU) instead of the first that can run; empty = automatic. For comparisons
  // in tests and benchmarks; a forced backend that cannot run is an error.
  std::string mxfp8_backend;

  // The scheme for a layer of this role ("bf16" for embeddings, router gates, and the LM head
  // unless quantize_lm_head). Throws for an unknown scheme.
  std::string scheme_for(LayerRole role) const;
};

// Schemes the registry knows for a layer kind, sorted ("bf16", "mxfp8").
std::vector<std::string> registered_schemes(LayerKind kind);

// A new method object; an unknown scheme throws an Error naming it, the layer and the known ones.
std::unique_ptr<LinearMethod> make_linear_method(const std::string& scheme, const QuantConfig& config,
                                                 const std::string& layer_name);
std::unique_ptr<FusedMoEMethod> make_fused_moe_method(const std::string& scheme, const QuantConfig& config,
                                                      const std::string& layer_name);

}  // namespace mxmoe
