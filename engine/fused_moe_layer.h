#pragma once
// FusedMoELayer: the routed experts of one MoE block, run by kernels/fused_moe.h, with a bf16 or
// MXFP8 method from the registry. Weights: w13 [E, 2I, H] (each expert's gate rows, then its up
// rows) and w2 [E, H, I], loaded from per-expert checkpoint tensors named by templates the model
// gives. Tensor parallelism shards I (w13: rows of each half; w2: columns); the caller all-reduces.
// The router gate and a shared expert are ordinary LinearLayers owned by the model; the forward that
// takes the router runs its logits GEMV inside the routing launch where it can (decode).
#include <memory>
#include <string>

#include "engine/linear.h"
#include "engine/loadable.h"
#include "engine/quant_method.h"
#include "engine/registry.h"
#include "kernels/fused_moe.h"

namespace mxmoe {

// Checkpoint tensor names of expert e: "{e}" in each template is replaced by the index.
struct ExpertNames {
  std::string gate, up, down;
  // Qwen3-MoE, Qwen2-MoE, OLMoE: <prefix>.{e}.gate_proj/up_proj/down_proj.weight
  static ExpertNames gate_up_down(const std::string& prefix);
  // Mixtral: <prefix>.{e}.w1 (gate) / w3 (up) / w2 (down).weight
  static ExpertNames mixtral(const std::string& prefix);
  std::string gate_name(int64_t e) const;
  std::string up_name(int64_t e) const;
  std::string down_name(int64_t e) const;
};

struct FusedMoEConfig {
  std::string name;  // for messages, e.g. "model.layers.3.mlp.experts"
  int64_t num_experts = 0, hidden_size = 0, intermediate_size = 0;  // E, H, I (I before TP)
  ExpertNames names;
  MoeRouting routing;
  int tp_rank = 0, tp_size = 1;
  Device device = Device::cuda;  // cpu: the reference backend
};

class FusedMoELayer : public Loadable {
 public:
  FusedMoELayer(FusedMoEConfig config, const QuantConfig& quant);

  // x [T, H] bf16, router_logits [T, E] f32 -> out [T, H] bf16 (this rank's partial sum under TP).
  void forward(const Tensor& x, const Tensor& router_logits, const Tensor& out, cudaStream_t stream = nullptr);
  // router.forward(x, router_logits) then the above, the same results, with the logits GEMV fused
  // into the routing kernel on CUDA for a bf16 router without bias at T = 1 (fused_moe_with_router
  // in kernels/moe_decode.h; one launch less per MoE layer). router_logits [T, E] f32 is written
  // either way.
  void forward(const Tensor& x, LinearLayer& router, const Tensor& router_logits, const Tensor& out,
               cudaStream_t stream = nullptr);
  // The decoder's `residual_out = residual + add; n = norm(residual_out)` in front of this block,
  // then forward(n, router, router_logits, out), with the norm inside the router launch
  // (moe_norm_router_logits: one kernel boundary less per MoE layer) where it applies: CUDA, one
  // token, the fused router form above. Returns false, having done nothing, elsewhere (the caller
  // runs add_rmsnorm and forward). The same results either way; residual_out is not residual.
  // MXMOE_MOE_NORM_ROUTER=0 turns it off, for comparison.
  // defer_combine: leave the combine to combine_add_rmsnorm (the decoder's next norm), writing
  // nothing to `out`, where the fused form applies (moe_combine_norm_fusable: H <= 4096);
  // combine_pending() tells whether it did (MXMOE_MOE_COMBINE_NORM=0: never).
  bool forward_after_norm(const Tensor& residual, const Tensor& add, const Tensor& norm_weight, float eps,
                          const Tensor& residual_out, const Tensor& n, LinearLayer& router, const Tensor& router_logits,
                          const Tensor& out, bool defer_combine, cudaStream_t stream = nullptr);
  bool combine_pending() const { return pending_.y.defined(); }
  // The deferred combine and the decoder's next `residual += mlp; n = norm(residual)` in one launch
  // (moe_combine_add_rmsnorm: one kernel boundary less per MoE layer), bit-equal to the two.
  void combine_add_rmsnorm(const Tensor& residual, const Tensor& norm_weight, float eps, const Tensor& n,
                           cudaStream_t stream = nullptr);

  const FusedMoEConfig& config() const { return config_; }
  const std::string& name() const { return config_.name; }
  Device device() const { return config_.device; }
  int64_t intermediate_size_per_partition() const { return config_.intermediate_size / config_.tp_size; }
  FusedMoEMethod& method() { return *method_; }
  std::string backend() const { return method_->backend(); }

  // Loadable: per expert e, specs 3e (gate), 3e+1 (up), 3e+2 (down).
  std::string loadable_name() const override { return config_.name; }
  std::vector<WeightSpec> weight_specs() const override;
  void begin_loading() override;
  Tensor weight_dest(size_t spec_index) override;
  void finish_loading() override;

  // ---- Parameters: declared by the method's create_weights, converted by process_weights_after_loading.
  Shape w13_shape, w2_shape;  // [E, 2I, H], [E, H, I] (this rank's I)
  DType params_dtype = DType::bf16;
  Tensor w13, w2;             // load buffers in params_dtype (bf16 method: kept; mxfp8: freed)
  MoeWeights weights;         // what fused_moe reads
  MoeWorkspace workspace;

 private:
  bool router_fusable(const Tensor& x, const LinearLayer& router) const;

  FusedMoEConfig config_;
  std::unique_ptr<FusedMoEMethod> method_;
  MoeSlots pending_;  // the slots of a deferred combine (in `workspace`), until combine_add_rmsnorm
};

// Registry entries (engine/registry.cpp).
std::unique_ptr<FusedMoEMethod> make_bf16_fused_moe_method(const QuantConfig& config);
std::unique_ptr<FusedMoEMethod> make_mxfp8_fused_moe_method(const QuantConfig& config);

}  // namespace mxmoe
