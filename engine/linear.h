#pragma once
// LinearLayer: y = x·Wᵀ (+ bias) with tensor-parallel sharding and a quantization method from the
// registry (bf16 or MXFP8). A merged column-parallel layer (QKV with unequal parts, gate_up) is one
// weight whose output rows are several checkpoint tensors, each loaded into its own row range.
//
// Tensor parallelism (rank r of tp): column-parallel layers split the output rows of every part
// (rows [r·N/tp, (r+1)·N/tp) of each checkpoint tensor, biases likewise); row-parallel layers split
// the input columns, and only rank 0 adds the bias (the caller all-reduces the partial outputs).
#include <memory>
#include <string>
#include <vector>

#include "engine/loadable.h"
#include "engine/quant_method.h"
#include "engine/registry.h"
#include "kernels/mxfp8.h"

namespace mxmoe {

enum class LinearParallel : uint8_t { replicated, column, row };

struct LinearPart {
  std::string name;  // checkpoint prefix: "<name>.weight" (and "<name>.bias"), e.g. "model.layers.0.self_attn.q_proj"
  int64_t size = 0;  // output rows of this part in the checkpoint (before TP)
};

struct LinearConfig {
  std::string name;               // layer name for messages, e.g. "model.layers.0.self_attn.qkv_proj"
  int64_t input_size = 0;         // K in the checkpoint (before TP)
  std::vector<LinearPart> parts;  // output parts in row order (one for an ordinary linear)
  bool bias = false;
  LinearParallel parallel = LinearParallel::replicated;
  LayerRole role = LayerRole::linear;
  int tp_rank = 0, tp_size = 1;
  Device device = Device::cuda;  // cpu: the reference backend
};

class LinearLayer : public Loadable {
 public:
  LinearLayer(LinearConfig config, const QuantConfig& quant);

  // out[M, N] = x[M, K] · Wᵀ (+ bias), this rank's N and K. x bf16; out bf16, or f32 for a bf16
  // layer without bias (router logits).
  void forward(const Tensor& x, const Tensor& out, cudaStream_t stream = nullptr);

  const LinearConfig& config() const { return config_; }
  const std::string& name() const { return config_.name; }
  Device device() const { return config_.device; }
  int64_t input_size_per_partition() const { return input_size_per_partition_; }
  const std::vector<int64_t>& output_partition_sizes() const { return output_partition_sizes_; }
  int64_t output_size_per_partition() const;
  LinearMethod& method() { return *method_; }
  std::string backend() const { return method_->backend(); }

  // Loadable
  std::string loadable_name() const override { return config_.name; }
  std::vector<WeightSpec> weight_specs() const override;
  void begin_loading() override;
  Tensor weight_dest(size_t spec_index) override;
  void finish_loading() override;

  // ---- Parameters: declared by the method's create_weights, converted by process_weights_after_loading.
  Shape weight_shape;             // [N, K] this rank's
  DType params_dtype = DType::bf16;
  Tensor weight;                  // [N, K] params_dtype: the load buffer (bf16 method: kept; mxfp8: freed)
  Tensor bias;                    // [N] bf16, or undefined
  MxTensor weight_mx;             // [N, K] e4m3 + [N, K/32] e8m0 (mxfp8 method, after loading)

 private:
  bool adds_bias() const;  // row-parallel: rank 0 only

  LinearConfig config_;
  int64_t input_size_per_partition_ = 0;
  std::vector<int64_t> output_partition_sizes_;
  std::unique_ptr<LinearMethod> method_;
};

// Registry entries (engine/registry.cpp).
std::unique_ptr<LinearMethod> make_bf16_linear_method(const QuantConfig& config);
std::unique_ptr<LinearMethod> make_mxfp8_linear_method(const QuantConfig& config);

}  // namespace mxmoe
