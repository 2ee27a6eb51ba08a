#pragma once
// The generation loop over a batch of prompts: one prefill step for all of them (sequences of
// different lengths in one batch), then decode steps for the sequences still running, each
// sampled on the model's device. A sequence stops at one of its stop ids (EOS), at
// max_new_tokens, or when the caller's on_token returns false (stop strings, cancellation); its
// KV blocks go back to the pool when the call returns.
//
// On the GPU a step allocates nothing from the driver: its temporaries come from a step arena
// (engine/step_arena.h), its index arrays go up in one asynchronous copy (engine/step_upload.h),
// and decode steps replay CUDA graphs (engine/decode_graphs.h) unless options say otherwise.
//
// Decode steps are chained: step n+1 is launched, fed the tokens step n sampled straight from
// the device (engine/sampled_tokens.h), before the host waits for step n's tokens, so the host's
// work between steps (reading tokens back, stop checks, the next step's index arrays, the launch)
// overlaps the GPU's. A sequence that step n stops (stop id, caller) then has one token drawn
// past its end, which is dropped: the results are those of unchained steps. Steps are not
// chained where the next one is not known in advance: a sequence reaching max_new_tokens,
// prompts still being prefilled, the first decode step after a prefill (see chainable in
// generator.cpp), a repetition penalty (the sampler reads the history, which
// needs the token on the host), or a KV cache without room for the speculative token. The
// environment variable MXMOE_CHAINED_STEPS=0 turns chaining off (comparison, debugging).
#include <cuda_runtime.h>

#include <functional>
#include <memory>
#include <set>
#include <span>
#include <vector>

#include "engine/decode_graphs.h"
#include "engine/kv_cache.h"
#include "engine/sampled_tokens.h"
#include "engine/step_arena.h"
#include "engine/step_upload.h"
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
  int64_t graph_captures = 0, graph_replays = 0;  // decode steps captured / replayed as CUDA graphs
  int64_t chained_steps = 0;  // decode steps launched before the previous step's tokens were read
};

struct GeneratorOptions {
  // GPU decode steps of up to max_graph_batch sequences are padded to a batch bucket and replay
  // CUDA graphs (engine/decode_graphs.h). cuda_graphs off: the same padded steps launch their
  // kernels from the host (debugging, comparison). Dynamic NTK rope (frequencies follow the
  // length) and larger batches run unpadded and eagerly. The environment variable
  // MXMOE_CUDA_GRAPHS=0 turns padded decode steps off as max_graph_batch = 0 does (debugging).
  bool cuda_graphs = true;
  int max_graph_batch = 256;  // 0: no padded decode steps at all
};

class Generator {
 public:
  Generator(CausalLM& model, KvCache& cache, const GeneratorOptions& options = {});

  std::vector<Generation> generate(const std::vector<std::vector<int32_t>>& prompts, const GenerationOptions& options,
                                   const TokenCallback& on_token = {});

  // One forward step: appends tokens[i] to sequence seqs[i] (cache ids) and returns the logits
  // [R, vocab] (model.logits_dtype(), on the model's device) of the step's token rows
  // `logit_rows` (indices into the concatenated new tokens). On the GPU the logits live in step
  // memory: read them (sample, copy) before the next step, which reuses it; holding them past
  // the next step's start is an Error there.
  Tensor step(std::span<const int> seqs, const std::vector<std::vector<int32_t>>& tokens,
              const std::vector<int32_t>& logit_rows);
  // The same for a decode step whose tokens are on the model's device (i32 [S], e.g. sampled by
  // the previous step and not read back): sequence seqs[i] is fed tokens[i].
  Tensor step(std::span<const int> seqs, const Tensor& tokens, const std::vector<int32_t>& logit_rows);

  const GenerationStats& stats() const;
  // The step arena (GPU; else nullptr): a caller that samples the logits may open a
  // StepArena::Scope on it around step() and its own work, so that work allocates nothing either.
  StepArena* arena() const { return arena_.get(); }
  KvCache& cache() { return cache_; }
  cudaStream_t stream() const { return stream_ ? cudaStream_t(*stream_) : nullptr; }

 private:
  // step() with the token ids taken from `fed` (i32 [S] on the device) when given.
  Tensor run_step(std::span<const int> seqs, const std::vector<std::vector<int32_t>>& tokens,
                  const std::vector<int32_t>& logit_rows, const Tensor* fed);

  CausalLM& model_;
  KvCache& cache_;
  Device device_;
  std::unique_ptr<Stream> stream_;  // GPU models only
  std::shared_ptr<StepArena> arena_;  // GPU models only
  StepUploader uploader_;
  std::set<int64_t> seen_tokens_;  // token counts steps have run with (see step())
  std::unique_ptr<DecodeGraphs> graphs_;  // padded decode steps (GPU)
  SampledTokens sampled_;                 // generate()'s tokens, two steps in flight
  bool chain_steps_;                      // MXMOE_CHAINED_STEPS
  mutable GenerationStats stats_;
};

}  // namespace mxmoe
