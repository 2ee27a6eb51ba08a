#pragma once
// The generation loop over a batch of prompts: one prefill step for all of them (sequences of
// different lengths in one batch), then decode steps for the sequences still running, each
// sampled on the model's device. A sequence stops at one of its stop ids (EOS), at
// max_new_tokens, or when the caller's on_token returns false (stop strings, cancellation); its
// KV blocks go back to the pool when the call returns.
#include <cuda_runtime.h>

#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "engine/kv_cache.h"
#include "engine/stream.h"
#include "kernels/sampling.h"
#include "models/model.h"

namespace mxmoe {

struct GenerationOptions {
  int max_new_tokens = 32;
  SamplingParams sampling;        // temperature 0: greedy
  std::vector<int32_t> stop_ids;  // EOS ids (config.json / generation_config.json)
  int max_step_tokens = 2048;     // tokens per forward step: longer prompts are prefilled in chunks
};

struct Generation {
  enum class Finish : uint8_t { length, stop_id, caller };
  std::vector<int32_t> tokens;  // generated ids, the stop id included when one ended it
  Finish finish = Finish::length;
};

// Called with each new token; returning false finishes that prompt's generation.
using TokenCallback = std::function<bool(size_t prompt, int32_t token)>;

struct GenerationStats {
  int64_t prompt_tokens = 0, generated_tokens = 0;
  double prefill_seconds = 0, decode_seconds = 0;
};

class Generator {
 public:
  Generator(CausalLM& model, KvCache& cache);

  std::vector<Generation> generate(const std::vector<std::vector<int32_t>>& prompts, const GenerationOptions& options,
                                   const TokenCallback& on_token = {});

  // One forward step: appends tokens[i] to sequence seqs[i] (cache ids) and returns the logits
  // [R, vocab] (model.logits_dtype(), on the model's device) of the step's token rows
  // `logit_rows` (indices into the concatenated new tokens).
  Tensor step(std::span<const int> seqs, const std::vector<std::vector<int32_t>>& tokens,
              const std::vector<int32_t>& logit_rows);

  const GenerationStats& stats() const { return stats_; }
  KvCache& cache() { return cache_; }
  cudaStream_t stream() const { return stream_ ? cudaStream_t(*stream_) : nullptr; }

 private:
  Tensor upload(const std::vector<int32_t>& values) const;  // i32 tensor on the model's device

  CausalLM& model_;
  KvCache& cache_;
  Device device_;
  std::unique_ptr<Stream> stream_;  // GPU models only
  GenerationStats stats_;
};

}  // namespace mxmoe
