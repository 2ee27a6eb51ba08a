#pragma once
// Decode steps replayed from CUDA graphs.
//
// A decode step (one new token per sequence) of S sequences is padded to a bucket of B >= S
// sequences (powers of two up to max_batch) and the longest sequence's length to a power of two
// C >= 256 (the attention split along the keys is sized by it, and a sequence of any length up to
// C is correct). Each (B, C) gets its own graph of model.forward over persistent inputs (the
// packed index arrays, updated by one asynchronous copy per step) writing into a persistent
// logits buffer. A bucket's first step runs eagerly (layers make or grow the workspaces they keep
// and set up libraries outside a capture), its second is captured, later ones replay.
//
// A graph bakes addresses: the step arena's buffer, the layers' workspaces, the logits buffer.
// It is recaptured when one of them may have moved: the arena grew (its generation changed), a
// step of a token count never seen ran (outside the arena, where layers may grow workspaces; the
// generator calls invalidate()), or the logits buffer grew.
//
// With replay off, the same padded steps launch eagerly every time: the comparison that isolates
// what graphs save, and a bitwise reference for them (same inputs, same kernels).
#include <cstdint>
#include <map>
#include <set>
#include <utility>

#include "engine/cuda_graph.h"
#include "engine/step_arena.h"
#include "engine/step_upload.h"

namespace mxmoe {

class DecodeGraphs {
 public:
  // seen_tokens: the generator's set of token counts steps have run with. A step of a new count
  // runs outside the arena (see Generator::step); a padded step does the same and adds its count.
  DecodeGraphs(CausalLM& model, const KvCache& cache, StepArena& arena, StepUploader& uploader, int max_batch,
               bool replay, std::set<int64_t>& seen_tokens);

  // Whether this decode step runs here (else the caller runs it eagerly).
  bool covers(const HostStep& step) const;
  // Runs the step; returns its logits [R, vocab], a view of a buffer the next step overwrites.
  // fed: i32 [S] on the device, or nullptr: the step's token ids, copied over step.token_ids on
  // the stream before the step runs (tokens sampled by the previous step, not read back yet).
  Tensor run(const HostStep& step, cudaStream_t stream, const Tensor* fed = nullptr);
  void invalidate() { ++epoch_; }

  int64_t captures() const { return captures_; }
  int64_t replays() const { return replays_; }

 private:
  struct Entry {
    Tensor inputs;  // i32 [packed size] on the device
    CudaGraph graph;
    uint64_t epoch = 0, arena_generation = 0;
    bool warmed = false;
  };
  int64_t bucket(int64_t num_seqs) const;
  void forward(const StepInputs& in, const Tensor& logits, cudaStream_t stream);

  CausalLM& model_;
  const KvCache& cache_;
  StepArena& arena_;
  StepUploader& uploader_;
  int max_batch_;
  bool replay_;
  std::set<int64_t>& seen_tokens_;
  std::map<std::pair<int64_t, int64_t>, Entry> entries_;  // by (batch, context)
  Tensor logits_;  // [rows, vocab], model.logits_dtype()
  uint64_t epoch_ = 1;
  int64_t captures_ = 0, replays_ = 0;
};

}  // namespace mxmoe
