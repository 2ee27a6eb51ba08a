#pragma once
// Quantization methods: the C++ form of vLLM's quantize-method contract (see DESIGN.md).
// A layer owns one method object, obtained from the registry (engine/registry.h) by quantization
// scheme and layer kind. The method
//   create_weights(...)                 declares the layer's load-time parameters (shapes, dtype)
//                                       and rejects shapes the scheme cannot hold;
//   process_weights_after_loading(...)  runs once all checkpoint tensors arrived: converts them
//                                       (e.g. quantizes to MXFP8 and frees the bf16 copy) and picks
//                                       the kernel backend for this GPU, once; calling it again
//                                       does nothing;
//   apply(...)                          runs the layer's math on that backend.
// A method object holds the per-layer state of its backend (chosen kernel, cuBLASLt scratch), so
// every layer gets its own.
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "engine/tensor.h"

namespace mxmoe {

enum class LayerKind : uint8_t { linear, fused_moe };

class LinearLayer;
class FusedMoELayer;

class LinearMethod {
 public:
  virtual ~LinearMethod() = default;
  virtual const char* scheme() const = 0;  // "bf16", "mxfp8"
  // Sizes are this tensor-parallel rank's (…_per_partition, output_partition_sizes) and the full
  // layer's (input_size, output_size).
  virtual void create_weights(LinearLayer& layer, int64_t input_size_per_partition,
                              const std::vector<int64_t>& output_partition_sizes, int64_t input_size,
                              int64_t output_size, DType params_dtype) = 0;
  virtual void process_weights_after_loading(LinearLayer& layer) = 0;
  // out[M, N] = x[M, K] · Wᵀ (+ bias[N]); shapes are checked by the layer.
  virtual void apply(LinearLayer& layer, const Tensor& x, const Tensor* bias, const Tensor& out,
                     cudaStream_t stream) = 0;
  // The backend chosen by process_weights_after_loading (empty before).
  virtual std::string backend() const = 0;
};

class FusedMoEMethod {
 public:
  virtual ~FusedMoEMethod() = default;
  virtual const char* scheme() const = 0;
  virtual void create_weights(FusedMoELayer& layer, int64_t num_experts, int64_t hidden_size,
                              int64_t intermediate_size_per_partition, DType params_dtype) = 0;
  virtual void process_weights_after_loading(FusedMoELayer& layer) = 0;
  // out[T, H] = the routed experts' sum for x[T, H] (bf16) and router_logits[T, E] (f32).
  virtual void apply(FusedMoELayer& layer, const Tensor& x, const Tensor& router_logits, const Tensor& out,
                     cudaStream_t stream) = 0;
  virtual std::string backend() const = 0;
};

}  // namespace mxmoe
