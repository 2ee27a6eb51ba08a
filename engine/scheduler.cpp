#include "engine/scheduler.h"

#include <algorithm>
#include <chrono>
#include <optional>

#include "engine/cuda_check.h"
#include "engine/error.h"
#include "engine/memory.h"
#include "engine/ops.h"
#include "engine/tensor_parallel.h"
#include "engine/text_stream.h"

namespace mxmoe {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

}  // namespace

SamplingParams to_sampling_params(const SamplingOptions& options) {
  SamplingParams p;
  p.temperature = options.temperature;
  p.top_k = options.top_k;
  p.top_p = options.top_p;
  p.min_p = options.min_p;
  p.repetition_penalty = options.repetition_penalty;
  p.seed = options.seed;
  return p;
}

GeneratorRunner::GeneratorRunner(Generator& generator)
    : generator_(generator), gpu_(generator.stream() ? current_device() : -1) {}

Tensor GeneratorRunner::step(std::span<const int> seqs, const std::vector<std::vector<int32_t>>& tokens,
                             const std::vector<int32_t>& logit_rows) {
  return generator_.step(seqs, tokens, logit_rows);
}

void GeneratorRunner::make_current() const {
  if (gpu_ >= 0) CUDA_CHECK(cudaSetDevice(gpu_));
}

TensorParallelRunner::TensorParallelRunner(TensorParallelRuntime& runtime) : runtime_(runtime) {
  MXMOE_CHECK(runtime.world_size() == runtime.local_size(),
              "the scheduler drives the ranks of one process: a multi-process runtime is not supported");
}

Tensor TensorParallelRunner::step(std::span<const int> seqs, const std::vector<std::vector<int32_t>>& tokens,
                                  const std::vector<int32_t>& logit_rows) {
  Tensor logits;  // rank 0's; the other ranks' copies are dropped (each rank's step memory)
  try {
    runtime_.run_on_ranks([&](TensorParallelRuntime::Rank& rank) {
      Tensor mine = rank.generator->step(seqs, tokens, logit_rows);
      if (rank.local == 0) logits = std::move(mine);
    });
  } catch (const std::exception& e) {
    fail("tensor parallel step: ", e.what(), " (the rank group is aborted: every later step fails the same way)");
  }
  return logits;
}

// Every rank's cache sees the same calls in the same order, so they all return the same id.
int TensorParallelRunner::add_sequence() {
  for (int i = 1; i < runtime_.local_size(); ++i) runtime_.rank(i).cache->add_sequence();
  return runtime_.rank(0).cache->add_sequence();
}

void TensorParallelRunner::free_sequence(int seq) {
  for (int i = 0; i < runtime_.local_size(); ++i) runtime_.rank(i).cache->free_sequence(seq);
}

const KvCache& TensorParallelRunner::cache() const { return *runtime_.rank(0).cache; }

cudaStream_t TensorParallelRunner::stream() const { return runtime_.rank(0).generator->stream(); }

void TensorParallelRunner::make_current() const {
  if (runtime_.device() == Device::cuda) CUDA_CHECK(cudaSetDevice(0));  // local rank i runs on GPU i
}

struct Scheduler::Sequence {
  Sequence(SequenceRequest r, const Tokenizer& tokenizer) : request(std::move(r)), text(tokenizer, request.stop) {}

  SequenceRequest request;
  std::shared_ptr<RequestState> state = std::make_shared<RequestState>();
  std::vector<int32_t> history;  // prompt + generated: the repetition penalty's input, and what a preempted sequence recomputes
  std::vector<int32_t> pending;  // tokens not yet in the KV cache
  int cache_id = -1;             // -1: holds no KV blocks (queued)
  TextStream text;               // the completion, cut at a stop string; streamed in safe pieces
  Result result;
  bool finished = false, started = false;
  Clock::time_point submitted = Clock::now();
};

Scheduler::Scheduler(ModelRunner& runner, const Tokenizer& tokenizer, const SchedulerOptions& options)
    : runner_(runner), cache_(runner.cache()), tokenizer_(tokenizer), options_(options) {
  MXMOE_CHECK(options_.max_batch_size >= 1, "max_batch_size must be >= 1, got ", options_.max_batch_size);
  MXMOE_CHECK(options_.max_step_tokens >= 1, "max_step_tokens must be >= 1, got ", options_.max_step_tokens);
  MXMOE_CHECK(cache_.num_blocks() * cache_.block_size() >= options_.max_model_len, "the KV cache holds ",
              cache_.num_blocks() * cache_.block_size(), " tokens, fewer than max_model_len ", options_.max_model_len,
              ": give it more blocks or lower max_model_len");
  stats_.kv_blocks = cache_.num_blocks();
  stats_.kv_free_blocks = cache_.free_blocks();
  thread_ = std::thread([this] { run(); });
}

Scheduler::~Scheduler() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

std::shared_ptr<RequestState> Scheduler::submit(SequenceRequest request) {
  const std::vector<int32_t>& prompt = request.prompt;
  MXMOE_CHECK(!prompt.empty(), "the prompt is empty");
  for (int32_t id : prompt)
    MXMOE_CHECK(id >= 0 && id < options_.vocab_size, "prompt token id ", id, " is outside the vocabulary [0, ",
                options_.vocab_size, ")");
  MXMOE_CHECK(int64_t(prompt.size()) < options_.max_model_len, "the prompt has ", prompt.size(),
              " tokens: no room for a completion within max_model_len ", options_.max_model_len);
  check_sampling_params(request.sampling);
  MXMOE_CHECK(request.max_new_tokens >= 0, "max_new_tokens must be >= 0, got ", request.max_new_tokens);
  for (const std::string& stop : request.stop) MXMOE_CHECK(!stop.empty(), "a stop string is empty");

  auto seq = std::make_unique<Sequence>(std::move(request), tokenizer_);
  seq->history = seq->pending = seq->request.prompt;
  seq->result.prompt_tokens = int64_t(seq->request.prompt.size());
  std::shared_ptr<RequestState> state = seq->state;
  if (seq->request.max_new_tokens == 0) {  // nothing to run
    state->result = seq->result;
    state->done = true;
    return state;
  }
  {
    std::lock_guard lock(mutex_);
    MXMOE_CHECK(!stopping_, "the engine is shutting down");
    incoming_.push_back(std::move(seq));
    ++stats_.waiting;
  }
  wake_.notify_one();
  return state;
}

EngineStats Scheduler::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

void Scheduler::run() {
  while (true) {
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || !incoming_.empty() || !waiting_.empty() || !running_.empty(); });
      if (stopping_) break;
      for (auto& s : incoming_) waiting_.push_back(std::move(s));
      incoming_.clear();
    }
    drop_cancelled();
    admit();
    step();
    publish_counts();
  }
  // Shutdown: whatever is left ends as cancelled.
  {
    std::lock_guard lock(mutex_);
    for (auto& s : incoming_) waiting_.push_back(std::move(s));
    incoming_.clear();
  }
  for (auto& s : running_) finish(*s, FinishReason::cancelled, "the engine shut down");
  for (auto& s : waiting_) finish(*s, FinishReason::cancelled, "the engine shut down");
  running_.clear();
  waiting_.clear();
  publish_counts();
}

void Scheduler::drop_cancelled() {
  for (auto& s : running_)
    if (s->state->cancel) finish(*s, FinishReason::cancelled);
  for (auto& s : waiting_)
    if (s->state->cancel) finish(*s, FinishReason::cancelled);
  remove_finished();
}

int64_t Scheduler::blocks_needed(const Sequence& s, int64_t tokens) const {
  const int64_t length = s.cache_id >= 0 ? cache_.length(s.cache_id) : 0;
  const int64_t held = s.cache_id >= 0 ? int64_t(cache_.blocks(s.cache_id).size()) : 0;
  return std::max<int64_t>(0, (length + tokens + cache_.block_size() - 1) / cache_.block_size() - held);
}

void Scheduler::admit() {
  while (!waiting_.empty() && int(running_.size()) < options_.max_batch_size) {
    Sequence& s = *waiting_.front();
    // Arrival order: the head waits for blocks rather than being overtaken. With nothing running
    // the whole pool is free and holds max_model_len tokens, so the head always fits then.
    if (blocks_needed(s, int64_t(s.pending.size())) > cache_.free_blocks()) break;
    s.cache_id = runner_.add_sequence();
    if (!s.started) {
      s.started = true;
      s.result.queue_seconds = seconds_between(s.submitted, Clock::now());
    }
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
}

void Scheduler::preempt_youngest() {
  Sequence& s = *running_.back();
  runner_.free_sequence(s.cache_id);
  s.cache_id = -1;
  s.pending = s.history;  // recompute prompt + generated tokens; the next sampled token continues the sequence
  ++s.result.preemptions;
  waiting_.push_front(std::move(running_.back()));
  running_.pop_back();
  std::lock_guard lock(mutex_);
  ++stats_.preemptions;
}

// The tokens each running sequence feeds this step (feed[i] for running_[i]; 0: sits this step out).
std::vector<size_t> Scheduler::plan_step(std::vector<int64_t>& feed) {
  feed.assign(running_.size(), 0);
  int64_t budget = options_.max_step_tokens;
  for (size_t i = 0; i < running_.size(); ++i)  // decode tokens first: they never wait behind a prefill
    if (running_[i]->pending.size() == 1) {
      feed[i] = 1;
      --budget;
    }
  for (size_t i = 0; i < running_.size(); ++i)
    if (running_[i]->pending.size() > 1) {
      feed[i] = std::min<int64_t>(int64_t(running_[i]->pending.size()), std::max<int64_t>(budget, 0));
      budget -= feed[i];
    }
  // KV blocks, oldest first: preempt the youngest until the older ones fit.
  int64_t reserved = 0;
  std::vector<size_t> plan;
  for (size_t i = 0; i < running_.size(); ++i) {
    if (feed[i] == 0) continue;
    const Sequence& s = *running_[i];
    while (blocks_needed(s, feed[i]) > cache_.free_blocks() - reserved && running_.size() > i + 1) {
      preempt_youngest();
      feed.pop_back();
    }
    const int64_t free_tokens = (cache_.free_blocks() - reserved) * cache_.block_size() +
                                int64_t(cache_.blocks(s.cache_id).size()) * cache_.block_size() -
                                cache_.length(s.cache_id);
    if (feed[i] > free_tokens) {  // the youngest: a shorter prefill chunk, or wait in the queue
      if (s.pending.size() > 1 && free_tokens > 0) {
        feed[i] = free_tokens;
      } else {
        preempt_youngest();
        feed.pop_back();
        break;
      }
    }
    reserved += blocks_needed(s, feed[i]);
    plan.push_back(i);
  }
  return plan;
}

void Scheduler::step() {
  std::vector<int64_t> feed;
  const std::vector<size_t> plan = plan_step(feed);
  if (plan.empty()) return;
  std::vector<int> seqs;
  std::vector<std::vector<int32_t>> tokens;
  std::vector<int32_t> rows, prev_offsets = {0}, prev_ids;
  std::vector<size_t> sampled;  // indices into running_
  std::vector<SamplingParams> params;
  int32_t row_end = 0;
  int64_t prompt_tokens = 0;
  for (size_t i : plan) {
    Sequence& s = *running_[i];
    // Decoding: feeding the token sampled last; anything else is prompt (or recomputation).
    const bool decode = !s.result.token_ids.empty() && cache_.length(s.cache_id) + 1 == int64_t(s.history.size());
    seqs.push_back(s.cache_id);
    tokens.emplace_back(s.pending.begin(), s.pending.begin() + feed[i]);
    s.pending.erase(s.pending.begin(), s.pending.begin() + feed[i]);
    row_end += int32_t(feed[i]);
    if (!decode) prompt_tokens += feed[i];
    if (!s.pending.empty()) continue;  // a middle chunk of a prompt
    sampled.push_back(i);
    rows.push_back(row_end - 1);  // the sequence's last token predicts the next
    prev_ids.insert(prev_ids.end(), s.history.begin(), s.history.end());
    prev_offsets.push_back(int32_t(prev_ids.size()));
    SamplingParams p = s.request.sampling;
    p.step = s.result.token_ids.size();
    params.push_back(p);
  }
  {
    std::lock_guard lock(mutex_);
    ++stats_.steps;
    stats_.max_step_sequences = std::max(stats_.max_step_sequences, int64_t(seqs.size()));
    stats_.prompt_tokens += prompt_tokens;
  }
  try {
    runner_.make_current();
    if (sampled.empty()) {  // only middle chunks: fill the cache, sample nothing
      runner_.step(seqs, tokens, {row_end - 1});
    } else {
      const Tensor logits = runner_.step(seqs, tokens, rows);
      cudaStream_t stream = runner_.stream();
      const Device device = logits.device();
      const int64_t b = int64_t(sampled.size()), vocab = logits.size(1);
      const Tensor chosen = Tensor::empty({b}, DType::i32, device);
      const Tensor workspace = device == Device::cuda ? Tensor::empty({b, vocab}, DType::f32, device) : Tensor();
      const int64_t n_prev = int64_t(prev_ids.size());
      std::vector<std::byte> staged(ops::sampler_input_bytes(b, n_prev));  // pageable: copied in the call
      const ops::StagedSamplerInputs parts = ops::sampler_staging(staged.data(), b, n_prev);
      std::copy(params.begin(), params.end(), parts.params.begin());
      std::copy(prev_offsets.begin(), prev_offsets.end(), parts.prev_offsets.begin());
      std::copy(prev_ids.begin(), prev_ids.end(), parts.prev_ids.begin());
      const ops::SamplerInputs inputs = ops::upload_sampler_inputs(staged.data(), b, n_prev, device, stream);
      ops::sample(logits, params, inputs, workspace, chosen, stream);
      const Tensor host = chosen.to(Device::cpu, stream);  // synchronizes the step
      for (size_t r = 0; r < sampled.size(); ++r) accept_token(*running_[sampled[r]], host.data_as<int32_t>()[r]);
    }
  } catch (const std::exception& e) {
    // The step's sequences fail; the others and the engine go on (a tensor-parallel runner whose
    // group aborted fails every later step too, so later requests end with its error).
    for (size_t i : plan) finish(*running_[i], FinishReason::error, e.what());
  }
  remove_finished();
}

void Scheduler::accept_token(Sequence& s, int32_t token) {
  const auto now = Clock::now();
  if (s.result.token_ids.empty()) s.result.first_token_seconds = seconds_between(s.submitted, now);
  s.result.token_ids.push_back(token);
  s.history.push_back(token);
  {
    std::lock_guard lock(mutex_);
    ++stats_.generated_tokens;
  }
  std::optional<FinishReason> reason;
  const auto& stop_ids = s.request.stop_ids;
  if (std::find(stop_ids.begin(), stop_ids.end(), token) != stop_ids.end())
    reason = FinishReason::stop;  // a stop token adds no text
  else if (s.text.push(token))
    reason = FinishReason::stop;
  if (!reason && (int(s.result.token_ids.size()) >= s.request.max_new_tokens ||
                  int64_t(s.history.size()) >= options_.max_model_len))
    reason = FinishReason::length;
  const std::string_view piece = s.text.take(reason.has_value());
  bool go_on = true;
  if (s.request.on_token) {
    try {
      go_on = s.request.on_token(token, piece);
    } catch (const std::exception& e) {
      return finish(s, FinishReason::error, cat("on_token threw: ", e.what()));
    }
  }
  if (reason)
    finish(s, *reason);
  else if (!go_on || s.state->cancel)
    finish(s, FinishReason::cancelled);
  else
    s.pending = {token};
}

void Scheduler::finish(Sequence& s, FinishReason reason, const std::string& error) {
  if (s.finished) return;
  s.finished = true;
  if (s.cache_id >= 0) runner_.free_sequence(s.cache_id);
  s.cache_id = -1;
  s.result.finish = reason;
  s.result.error = error;
  s.result.text = s.text.text();
  s.result.total_seconds = seconds_between(s.submitted, Clock::now());
  {
    std::lock_guard lock(mutex_);  // the blocks are back before the caller hears of it
    stats_.kv_free_blocks = cache_.free_blocks();
  }
  {
    std::lock_guard lock(s.state->mutex);
    s.state->result = std::move(s.result);
    s.state->done = true;
  }
  s.state->finished.notify_all();
}

void Scheduler::remove_finished() {
  const auto gone = [](const std::unique_ptr<Sequence>& s) { return s->finished; };
  running_.erase(std::remove_if(running_.begin(), running_.end(), gone), running_.end());
  waiting_.erase(std::remove_if(waiting_.begin(), waiting_.end(), gone), waiting_.end());
}

void Scheduler::publish_counts() {
  std::lock_guard lock(mutex_);
  stats_.running = int64_t(running_.size());
  stats_.waiting = int64_t(waiting_.size() + incoming_.size());
  stats_.kv_free_blocks = cache_.free_blocks();
}

}  // namespace mxmoe
