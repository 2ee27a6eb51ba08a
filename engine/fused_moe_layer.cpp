#include "engine/fused_moe_layer.h"

#include <cmath>
#include <utility>

#include "engine/env.h"
#include "engine/error.h"
#include "engine/log.h"
#include "engine/stream.h"
#include "kernels/matmul_ref.h"
#include "kernels/moe_decode.h"
#include "kernels/moe_permute.h"

namespace mxmoe {

namespace {

std::string expand(const std::string& pattern, int64_t e) {
  const size_t at = pattern.find("{e}");
  MXMOE_CHECK(at != std::string::npos, "expert name template '", pattern, "' has no {e}");
  return pattern.substr(0, at) + std::to_string(e) + pattern.substr(at + 3);
}

// On the CPU, kernels/fused_moe.h runs its reference; on the GPU its CUDA kernels (which pick the
// Hopper or Blackwell path themselves).
std::string moe_backend(const FusedMoELayer& layer, const char* scheme) {
  const std::string backend = layer.device() == Device::cpu ? "reference" : "fused-moe-cuda";
  log_info(layer.name(), ": ", scheme, " fused MoE [E=", layer.config().num_experts, ", 2I=",
           2 * layer.intermediate_size_per_partition(), ", H=", layer.config().hidden_size, "] on ", backend);
  return backend;
}

// Both schemes: the MXFP8 blocks run along H (w13) and I (w2), and the kernels tile by 32 in bf16 too.
void declare(FusedMoELayer& layer, const char* scheme, int64_t e, int64_t h, int64_t i, DType params_dtype) {
  MXMOE_CHECK(h % kMxBlock == 0 && i % kMxBlock == 0, "layer ", layer.name(), ": ", scheme,
              " experts need the hidden size and the intermediate size per partition to be multiples of ", kMxBlock,
              ", got H = ", h, ", I = ", i, " (tensor parallel ", layer.config().tp_size, ")");
  layer.w13_shape = {e, 2 * i, h};
  layer.w2_shape = {e, h, i};
  layer.params_dtype = params_dtype;
}

// The checkpoint tensor holding the first NaN/Inf of a [E, rows, K] stack (rows: gate then up for
// w13), or "" if none. Only run after quantization reported one, to name it.
std::string find_nonfinite(const FusedMoELayer& layer, const Tensor& stack, bool is_w13) {
  const int64_t i = layer.intermediate_size_per_partition();
  for (int64_t e = 0; e < stack.size(0); ++e) {
    const std::vector<float> v = to_f32_vector(stack.select(e).to(Device::cpu));
    for (size_t j = 0; j < v.size(); ++j)
      if (!std::isfinite(v[j])) {
        const auto& names = layer.config().names;
        if (!is_w13) return names.down_name(e);
        return int64_t(j) / stack.size(2) < i ? names.gate_name(e) : names.up_name(e);
      }
  }
  return "";
}

// Quantizes a whole [E, rows, K] stack in one launch; a NaN/Inf error names the checkpoint tensor.
MxTensor quantize_stack(const FusedMoELayer& layer, const Tensor& stack, bool is_w13, ScaleRule rule) {
  MxTensor q = mxfp8_empty(stack.shape(), layer.device());
  const std::string what = layer.name() + (is_w13 ? ".w13" : ".w2");
  const auto name_it = [&] {
    const std::string tensor = find_nonfinite(layer, stack, is_w13);
    if (!tensor.empty()) fail("weight ", tensor, " holds NaN/Inf value(s); refusing to quantize it");
  };
  if (layer.device() == Device::cuda) {
    try {
      const Stream stream;
      mxfp8_quantize_weight(stack, q, rule, stream, what);
    } catch (const Error&) {
      name_it();
      throw;
    }
  } else if (mxfp8_quantize_ref(stack, q, rule) != 0) {
    name_it();
    fail("weight ", what, " holds NaN/Inf value(s); refusing to quantize it");
  }
  return q;
}

// What both schemes share: the declared parameters, the kernel entry (fused_moe dispatches on
// which of layer.weights is filled) and the backend chosen at load. Subclasses convert the loaded
// weights.
class FusedMoEMethodCommon : public FusedMoEMethod {
 public:
  void create_weights(FusedMoELayer& layer, int64_t e, int64_t h, int64_t i, DType params_dtype) override {
    declare(layer, scheme(), e, h, i, params_dtype);
  }
  void apply(FusedMoELayer& layer, const Tensor& x, const Tensor& router_logits, const Tensor& out,
             cudaStream_t stream) override {
    fused_moe(x, router_logits, layer.weights, layer.config().routing, out, layer.workspace, stream);
  }
  std::string backend() const override { return backend_; }

 protected:
  std::string backend_;  // empty until process_weights_after_loading ran (which makes it idempotent)
};

class Bf16FusedMoEMethod final : public FusedMoEMethodCommon {
 public:
  const char* scheme() const override { return "bf16"; }
  void process_weights_after_loading(FusedMoELayer& layer) override {
    if (!backend_.empty()) return;
    layer.weights.w13 = layer.w13;
    layer.weights.w2 = layer.w2;
    backend_ = moe_backend(layer, scheme());
  }
};

class Mxfp8FusedMoEMethod final : public FusedMoEMethodCommon {
 public:
  explicit Mxfp8FusedMoEMethod(const QuantConfig& config) : rule_(config.scale_rule) {}
  const char* scheme() const override { return "mxfp8"; }
  void process_weights_after_loading(FusedMoELayer& layer) override {
    if (!backend_.empty()) return;
    MXMOE_CHECK(layer.w13.defined() && layer.w2.defined(), "layer ", layer.name(),
                ": process_weights_after_loading before its weights were loaded");
    layer.weights.w13_mx = quantize_stack(layer, layer.w13, true, rule_);
    layer.weights.w2_mx = quantize_stack(layer, layer.w2, false, rule_);
    layer.w13 = Tensor();
    layer.w2 = Tensor();
    backend_ = moe_backend(layer, scheme());
  }

 private:
  ScaleRule rule_;
};

}  // namespace

std::unique_ptr<FusedMoEMethod> make_bf16_fused_moe_method(const QuantConfig&) {
  return std::make_unique<Bf16FusedMoEMethod>();
}

std::unique_ptr<FusedMoEMethod> make_mxfp8_fused_moe_method(const QuantConfig& config) {
  return std::make_unique<Mxfp8FusedMoEMethod>(config);
}

ExpertNames ExpertNames::gate_up_down(const std::string& prefix) {
  return {prefix + ".{e}.gate_proj.weight", prefix + ".{e}.up_proj.weight", prefix + ".{e}.down_proj.weight"};
}

ExpertNames ExpertNames::mixtral(const std::string& prefix) {
  return {prefix + ".{e}.w1.weight", prefix + ".{e}.w3.weight", prefix + ".{e}.w2.weight"};
}

std::string ExpertNames::gate_name(int64_t e) const { return expand(gate, e); }
std::string ExpertNames::up_name(int64_t e) const { return expand(up, e); }
std::string ExpertNames::down_name(int64_t e) const { return expand(down, e); }

FusedMoELayer::FusedMoELayer(FusedMoEConfig config, const QuantConfig& quant) : config_(std::move(config)) {
  const FusedMoEConfig& c = config_;
  MXMOE_CHECK(c.num_experts > 0 && c.hidden_size > 0 && c.intermediate_size > 0, "layer ", c.name,
              ": needs E, H and I > 0, got E = ", c.num_experts, ", H = ", c.hidden_size, ", I = ",
              c.intermediate_size);
  MXMOE_CHECK(c.routing.top_k >= 1 && c.routing.top_k <= c.num_experts, "layer ", c.name, ": top_k ",
              c.routing.top_k, " with ", c.num_experts, " experts");
  MXMOE_CHECK(c.tp_size >= 1 && c.tp_rank >= 0 && c.tp_rank < c.tp_size, "layer ", c.name,
              ": tensor parallel rank ", c.tp_rank, " of ", c.tp_size);
  MXMOE_CHECK(c.intermediate_size % c.tp_size == 0, "layer ", c.name, ": intermediate size ", c.intermediate_size,
              " not divisible by tensor parallel size ", c.tp_size);
  method_ = make_fused_moe_method(quant.scheme_for(LayerRole::experts), quant, c.name);
  method_->create_weights(*this, c.num_experts, c.hidden_size, intermediate_size_per_partition(), DType::bf16);
}

std::vector<WeightSpec> FusedMoELayer::weight_specs() const {
  const FusedMoEConfig& c = config_;
  const int64_t i = intermediate_size_per_partition();
  const ShardSlice rows = c.tp_size > 1 ? ShardSlice{0, c.tp_rank * i, i} : ShardSlice{};
  const ShardSlice cols = c.tp_size > 1 ? ShardSlice{1, c.tp_rank * i, i} : ShardSlice{};
  std::vector<WeightSpec> specs;
  for (int64_t e = 0; e < c.num_experts; ++e) {
    specs.push_back({c.names.gate_name(e), {c.intermediate_size, c.hidden_size}, rows});
    specs.push_back({c.names.up_name(e), {c.intermediate_size, c.hidden_size}, rows});
    specs.push_back({c.names.down_name(e), {c.hidden_size, c.intermediate_size}, cols});
  }
  return specs;
}

void FusedMoELayer::begin_loading() {
  w13 = Tensor::empty(w13_shape, params_dtype, config_.device);
  w2 = Tensor::empty(w2_shape, params_dtype, config_.device);
}

Tensor FusedMoELayer::weight_dest(size_t spec_index) {
  MXMOE_CHECK(spec_index < size_t(3 * config_.num_experts), "layer ", name(), ": weight spec ", spec_index,
              " out of range");
  MXMOE_CHECK(w13.defined() && w2.defined(), "layer ", name(), ": weight_dest before begin_loading");
  const int64_t e = int64_t(spec_index / 3), i = intermediate_size_per_partition();
  switch (spec_index % 3) {
    case 0: return w13.select(e).slice(0, i);      // gate rows [I, H]
    case 1: return w13.select(e).slice(i, 2 * i);  // up rows [I, H]
    default: return w2.select(e);                  // [H, I]
  }
}

void FusedMoELayer::finish_loading() { method_->process_weights_after_loading(*this); }

void FusedMoELayer::forward(const Tensor& x, const Tensor& router_logits, const Tensor& out, cudaStream_t stream) {
  MXMOE_CHECK(!method_->backend().empty(), "layer ", name(), ": forward before its weights were loaded");
  const int64_t h = config_.hidden_size, e = config_.num_experts;
  MXMOE_CHECK(x.dim() == 2 && x.size(1) == h && x.dtype() == DType::bf16 && x.device() == config_.device, "layer ",
              name(), ": input must be [T, ", h, "] bf16 on the layer's device, got ", shape_str(x.shape()), " ",
              dtype_name(x.dtype()));
  MXMOE_CHECK(router_logits.dim() == 2 && router_logits.size(0) == x.size(0) && router_logits.size(1) == e &&
                  router_logits.dtype() == DType::f32 && router_logits.device() == config_.device,
              "layer ", name(), ": router logits must be [", x.size(0), ", ", e, "] f32, got ",
              shape_str(router_logits.shape()), " ", dtype_name(router_logits.dtype()));
  MXMOE_CHECK(out.dim() == 2 && out.size(0) == x.size(0) && out.size(1) == h && out.dtype() == DType::bf16 &&
                  out.device() == config_.device,
              "layer ", name(), ": output must be [", x.size(0), ", ", h, "] bf16, got ", shape_str(out.shape()), " ",
              dtype_name(out.dtype()));
  if (x.size(0) == 0) return;
  method_->apply(*this, x, router_logits, out, stream);
}

// The fused kernels read the router's bf16 weight themselves: only the plain bf16 method's layout.
// Only at T = 1, where it measured ahead (the expert kernels routing the token themselves): the
// whole MoE call with the router 30.8 us vs 35.7 for the cuBLASLt logits GEMM + fused_moe
// (Qwen3-30B-A3B; Mixtral 154.4 vs 158.6), but at T = 8 128.7 vs 125.4 (bench-moe, H100, one run).
bool FusedMoELayer::router_fusable(const Tensor& x, const LinearLayer& router) const {
  return config_.device == Device::cuda && router.backend() == "cublaslt-bf16" && !router.bias.defined() &&
         router.weight.defined() && router.weight.dtype() == DType::bf16 &&
         router.weight.shape() == Shape({config_.num_experts, config_.hidden_size}) && x.dim() == 2 &&
         x.size(0) == 1 && fused_moe_router_fusable(x, router.weight, config_.routing);
}

void FusedMoELayer::forward(const Tensor& x, LinearLayer& router, const Tensor& router_logits, const Tensor& out,
                            cudaStream_t stream) {
  if (!router_fusable(x, router)) {
    router.forward(x, router_logits, stream);
    return forward(x, router_logits, out, stream);
  }
  MXMOE_CHECK(!method_->backend().empty(), "layer ", name(), ": forward before its weights were loaded");
  fused_moe_with_router(x, router.weight, router_logits, weights, config_.routing, out, workspace, stream);
}

bool FusedMoELayer::forward_after_norm(const Tensor& residual, const Tensor& add, const Tensor& norm_weight, float eps,
                                       const Tensor& residual_out, const Tensor& n, LinearLayer& router,
                                       const Tensor& router_logits, const Tensor& out, bool defer_combine,
                                       cudaStream_t stream) {
  static const bool enabled = env_flag("MXMOE_MOE_NORM_ROUTER", true);
  static const bool combine_norm = env_flag("MXMOE_MOE_COMBINE_NORM", true);
  if (!enabled || !router_fusable(n, router) || !moe_norm_router_fusable(n.size(0), n.size(1))) return false;
  MXMOE_CHECK(!method_->backend().empty(), "layer ", name(), ": forward before its weights were loaded");
  moe_norm_router_logits(residual, add, norm_weight, eps, residual_out, n, router.weight, router_logits, stream);
  // One token: the expert kernels route it from the logits.
  if (defer_combine && combine_norm && moe_combine_norm_fusable(n.size(1)))
    pending_ = fused_moe_token_slots(n, router_logits, weights, config_.routing, workspace, stream);
  else
    forward(n, router_logits, out, stream);
  return true;
}

void FusedMoELayer::combine_add_rmsnorm(const Tensor& residual, const Tensor& norm_weight, float eps, const Tensor& n,
                                        cudaStream_t stream) {
  MXMOE_CHECK(combine_pending(), "layer ", name(), ": combine_add_rmsnorm without a deferred combine");
  moe_combine_add_rmsnorm(pending_.y, pending_.weights, residual, norm_weight, eps, n, !pending_.one_launch, stream);
  pending_ = {};
}

}  // namespace mxmoe
