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
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "engine/generator.h"
#include "engine/kv_cache.h"
#include "engine/mxmoe.h"
#include "engine/tensor.h"
#include "kernels/sampling.h"

namespace mxmoe {

class TensorParallelRuntime;

// What the scheduler drives: the model's forward step and the KV cache it appends to. The
// scheduler reads its decisions (free blocks, lengths, block lists) from cache() and makes every
// change through this interface, so a tensor-parallel runner can replay each change on every
// rank's cache: the ranks' host-side block allocators then see the same operations in the same
// order and hand out the same block ids.
class ModelRunner {
 public:
  virtual ~ModelRunner() = default;
  // Appends tokens[i] to cache sequence seqs[i] and returns the logits [R, vocab] of the step's
  // token rows `logit_rows`, on stream() (Generator::step's contract).
  virtual Tensor step(std::span<const int> seqs, const std::vector<std::vector<int32_t>>& tokens,
                      const std::vector<int32_t>& logit_rows) = 0;
  virtual int add_sequence() = 0;
  virtual void free_sequence(int seq) = 0;
  virtual const KvCache& cache() const = 0;
  virtual cudaStream_t stream() const = 0;  // where the logits are ready; null on the CPU
  // Makes the GPU of step() (one Generator) and of the logits current on the calling thread
  // (nothing on the CPU). The scheduler calls it before each step and its sampling: on_token
  // callbacks run on the scheduler's thread and may switch devices.
  virtual void make_current() const = 0;
};

// One Generator and its cache.
class GeneratorRunner final : public ModelRunner {
 public:
  explicit GeneratorRunner(Generator& generator);  // the GPU current now is the model's
  Tensor step(std::span<const int> seqs, const std::vector<std::vector<int32_t>>& tokens,
              const std::vector<int32_t>& logit_rows) override;
  int add_sequence() override { return generator_.cache().add_sequence(); }
  void free_sequence(int seq) override { generator_.cache().free_sequence(seq); }
  const KvCache& cache() const override { return generator_.cache(); }
  cudaStream_t stream() const override { return generator_.stream(); }
  void make_current() const override;

 private:
  Generator& generator_;
  int gpu_ = -1;  // -1: the CPU backend
};

// Every local rank of a tensor-parallel runtime (engine/tensor_parallel.h). A step fans out over
// the rank threads (run_on_ranks: each rank steps its own Generator; the collectives inside keep
// them in lockstep) and returns rank 0's logits — after the logits all-gather every rank holds the
// same ones, so the scheduler samples once, on rank 0's GPU and stream. Sequences are added and
// freed on every rank's cache from the calling thread, between steps (the rank threads are idle
// then). A failing rank aborts the group: that step and every later one throw its error.
class TensorParallelRunner final : public ModelRunner {
 public:
  explicit TensorParallelRunner(TensorParallelRuntime& runtime);  // single process (no dist_init)
  Tensor step(std::span<const int> seqs, const std::vector<std::vector<int32_t>>& tokens,
              const std::vector<int32_t>& logit_rows) override;
  int add_sequence() override;
  void free_sequence(int seq) override;
  const KvCache& cache() const override;
  cudaStream_t stream() const override;
  void make_current() const override;

 private:
  TensorParallelRuntime& runtime_;
};

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
  // `runner` and `tokenizer` outlive the scheduler.
  Scheduler(ModelRunner& runner, const Tokenizer& tokenizer, const SchedulerOptions& options);
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

  ModelRunner& runner_;
  const KvCache& cache_;  // runner_.cache(): what the decisions read
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
