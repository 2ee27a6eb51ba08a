#pragma once
// Continuous batching: one thread owns the model's forward step and the paged KV cache; requests
// from any thread wait in a queue and join the running batch between steps.
//
// A step, built fresh each time from the running sequences (oldest first):
//   - every decoding sequence feeds its one new token;
//   - sequences still prefilling (new, or recomputing after preemption) feed the next chunk of
//     their prompt from what is left of max_step_tokens, oldest first; so prefill chunks and
//     decode tokens share a step, and a long prompt is prefilled over several steps;
//   - the KV blocks the step needs are taken before it runs: when the pool cannot hold them, the
//     youngest running sequence is preempted (its blocks freed, the sequence put back at the head
//     of the queue to recompute prompt + generated tokens later) until it can. The oldest sequence
//     always fits (the pool holds max_model_len tokens), so the batch always progresses.
// Between steps, cancelled sequences leave, and queued ones are admitted in arrival order while the
// batch has room (max_batch_size) and the free blocks hold the sequence's pending tokens.
// Every sequence whose pending tokens all went in gets a token sampled with its own parameters
// (kernels/sampling.h samples each row with its own SamplingParams), then its stop conditions and
// callback run; finished sequences free their blocks at once.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "engine/kv_cache.h"
#include "engine/mxmoe.h"
#include "engine/tensor.h"
#include "kernels/sampling.h"

namespace mxmoe {

// The step seam: appends tokens[i] to cache sequence seqs[i] and returns the logits [R, vocab] of
// the step's token rows `logit_rows` (Generator::step's contract). A tensor-parallel engine puts its
// fan-out over rank threads behind this function.
using StepFunction = std::function<Tensor(std::span<const int> seqs, const std::vector<std::vector<int32_t>>& tokens,
                                          const std::vector<int32_t>& logit_rows)>;

struct SchedulerOptions {
  int max_batch_size = 64;
  int max_step_tokens = 2048;
  int64_t max_model_len = 0;
  int64_t vocab_size = 0;
  std::vector<int32_t> eos_ids;
};

// The public sampling options as the sampler's per-row parameters.
SamplingParams to_sampling_params(const SamplingOptions& options);

// A request after its prompt became ids.
struct SequenceRequest {
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  int max_new_tokens = 0;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_ids;  // all of them (EOS ids included unless ignored)
  OnToken on_token;
};

struct RequestState {
  std::mutex mutex;
  std::condition_variable finished;
  bool done = false;
  Result result;
  std::atomic<bool> cancel{false};
};

class Scheduler {
 public:
  // `cache` and `tokenizer` outlive the scheduler; `stream` orders the sampling after the step.
  Scheduler(StepFunction step, KvCache& cache, cudaStream_t stream, const Tokenizer& tokenizer,
            const SchedulerOptions& options);
  ~Scheduler();  // cancels queued and running requests, then joins the thread
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Error, before anything runs, for an empty prompt, one that leaves no room for a token within
  // max_model_len, an id outside the vocabulary, bad sampling parameters or max_new_tokens < 0.
  std::shared_ptr<RequestState> submit(SequenceRequest request);
  EngineStats stats() const;

 private:
  struct Sequence;
  void run();
  void admit();
  void step();
  std::vector<size_t> plan_step(std::vector<int64_t>& feed);
  void preempt_youngest();
  void accept_token(Sequence& s, int32_t token);
  void finish(Sequence& s, FinishReason reason, const std::string& error = {});
  void drop_cancelled();
  void remove_finished();
  void publish_counts();
  int64_t blocks_needed(const Sequence& s, int64_t tokens) const;

  StepFunction step_;
  KvCache& cache_;
  cudaStream_t stream_;
  const Tokenizer& tokenizer_;
  SchedulerOptions options_;

  mutable std::mutex mutex_;  // guards incoming_, stopping_, stats_
  std::condition_variable wake_;
  std::vector<std::unique_ptr<Sequence>> incoming_;
  bool stopping_ = false;
  EngineStats stats_;

  // Owned by the scheduler thread.
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;  // oldest admission first
  std::thread thread_;
};

}  // namespace mxmoe
