#pragma once
// A causal language model as the runtime sees it: the layers it asks the loader to fill, and one
// forward step over a batch of sequences whose keys and values live in a paged KV cache.
// Models are built from layers (engine/linear.h, engine/fused_moe_layer.h) and the ops of
// engine/ops.h; they never touch a device directly, so one model file serves the GPU and the CPU
// reference backend alike.
#include <cuda_runtime.h>

#include <memory>
#include <vector>

#include "engine/communicator.h"
#include "engine/kv_cache.h"
#include "engine/loadable.h"
#include "engine/registry.h"
#include "kernels/attention.h"
#include "loader/model_config.h"

namespace mxmoe {

struct ModelOptions {
  QuantConfig quant;             // mxfp8 (default) or bf16, per-layer overrides
  Device device = Device::cuda;  // cpu: the reference backend
  // Tensor parallelism: this rank's communicator (engine/communicator.h; it must outlive the
  // model). The model then holds only this rank's shard and calls the collectives in forward();
  // every rank must run the same forward steps (SPMD). nullptr: the whole model, no collectives.
  // A communicator of size 1 also holds the whole model but still runs the collectives (which are
  // then identities), so the communicator path can be tested on one device.
  Communicator* comm = nullptr;
};

// One step: T new tokens of S sequences, on the model's device.
struct StepInputs {
  Tensor token_ids;          // i32 [T]
  Tensor positions;          // i32 [T]
  Tensor kv_slots;           // i32 [T]: cache slot of each token
  AttentionBatch attention;  // the S sequences: block tables, cu_seqlens [S+1], seq_lens [S]
  Tensor logit_rows;         // i32 [R]: the token rows whose logits are wanted (e.g. each sequence's last)
};

class CausalLM {
 public:
  virtual ~CausalLM() = default;
  virtual const ModelConfig& config() const = 0;
  virtual std::vector<Loadable*> loadables() = 0;  // in load order
  // The KV cache geometry this model needs (num_layers, KV heads, head_dim); under tensor
  // parallelism this rank's KV heads.
  virtual KvCacheConfig kv_cache_config() const = 0;
  // f32 when the LM head is bf16 (the default); bf16 when it is quantized.
  virtual DType logits_dtype() const = 0;
  // Writes the step's keys/values into `cache` and logits [R, vocab] into `logits` (the full
  // vocabulary on every rank under tensor parallelism).
  virtual void forward(const StepInputs& in, const KvCache& cache, const Tensor& logits, cudaStream_t stream) = 0;
};

// Builds the model for config.model_type; an unknown type is an Error listing the supported ones.
std::unique_ptr<CausalLM> make_causal_lm(const ModelConfig& config, const ModelOptions& options);

}  // namespace mxmoe
