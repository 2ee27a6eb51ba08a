#pragma once
// mxmoe's embeddable API: load a Hugging Face checkpoint once, then generate from any number of
// threads. Requests are batched by a continuous-batching scheduler (engine/scheduler.h): one
// thread owns the model and its paged KV cache; new sequences join between steps, finished ones
// leave at once and free their KV blocks.
//
//   mxmoe::Engine engine({.model = "models/demo"});
//   mxmoe::Request request{.prompt = "And it came to pass", .max_new_tokens = 32};
//   request.sampling.temperature = 0;  // greedy
//   mxmoe::Result r = engine.generate(request, [](int32_t, std::string_view text) {
//     std::fwrite(text.data(), 1, text.size(), stdout);
//     return true;  // false cancels
//   });
//
// Tensor parallelism (tensor_parallel_size = tp > 1): one process drives tp ranks, each holding its
// shard of the model (heads, experts' columns, vocabulary) and of the KV cache on GPU i; each step
// runs on all of them in lockstep and the scheduler samples rank 0's logits (all ranks hold the same
// ones). tp must divide num_attention_heads and vocab_size, and divide or be a multiple of
// num_key_value_heads (an Error from the constructor otherwise). kv_cache_blocks and
// gpu_memory_limit_gb are per rank; with kv_cache_blocks 0 every rank gets the pool the fullest
// GPU leaves room for.
//
// Errors are mxmoe::Error exceptions: from the constructor (bad options, unreadable checkpoint)
// and from generate()/submit() for a bad request, before anything runs. A failure inside a model
// step ends the requests of that step with FinishReason::error and the message in Result::error;
// the engine stays usable. Under tensor parallelism a rank that fails aborts the rank group: the
// requests of that step end with its error, and so does every later request (nothing hangs), so
// make a new Engine.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/error.h"
#include "engine/tokenizer.h"

namespace mxmoe {

struct EngineOptions {
  std::string model;                   // checkpoint directory: config.json, *.safetensors, tokenizer.json
  std::string quantization = "mxfp8";  // mxfp8 (weights quantized while loading) or bf16
  std::string device;                  // "cuda", "cpu" (the reference backend) or empty: cuda when present
  std::string load_format = "safetensors";  // or "dummy": random weights (tokenizer.json still read)
  int64_t max_model_len = 0;           // longest prompt + completion; 0: min(max_position_embeddings, 8192)
  double gpu_memory_limit_gb = 0;      // cap on the engine's GPU memory; 0: none
  int64_t kv_cache_blocks = 0;         // KV pool size in blocks; 0: from kv_cache_memory_fraction on
                                       // the GPU, 4 x max_model_len tokens on the CPU
  double kv_cache_memory_fraction = 0.9;  // of the free GPU memory after loading (kv_cache_blocks == 0)
  int kv_block_size = 16;              // tokens per KV block (a power of two)
  int max_batch_size = 64;             // sequences per step
  int max_step_tokens = 2048;          // tokens per step: longer prompts are prefilled in chunks
  int tensor_parallel_size = 1;        // > 1: the model split over that many GPUs 0 .. tp-1 (with device
                                       // cpu, simulated ranks), each with its own KV pool; see below
  bool quiet = true;                   // no load progress on stderr
};

// Sampling in Hugging Face's order: repetition penalty -> temperature -> top-k -> top-p -> min-p.
struct SamplingOptions {
  float temperature = 1.f;         // 0: greedy
  int32_t top_k = 0;               // 0: off
  float top_p = 1.f;               // 1: off; (0, 1]
  float min_p = 0.f;               // 0: off; [0, 1]
  float repetition_penalty = 1.f;  // 1: off; > 0
  uint64_t seed = 0;               // the same seed gives the same tokens, batched or alone
};

struct Message {
  std::string role;  // "system", "user", "assistant"
  std::string content;
};

// The prompt is exactly one of: text, token ids, or chat messages (rendered with the checkpoint's
// chat template and a generation prompt, then tokenized without adding special tokens again).
struct Request {
  std::string prompt;                  // text; tokenized with the tokenizer's special tokens (e.g. BOS)
  std::vector<int32_t> prompt_ids;     // token ids as they are
  std::vector<Message> messages;       // a chat
  SamplingOptions sampling;
  int max_new_tokens = 128;            // also ends at max_model_len
  std::vector<std::string> stop;       // stop strings: the text ends before the first one
  std::vector<int32_t> stop_ids;       // stop tokens besides the model's EOS ids
  bool ignore_eos = false;             // do not stop at the model's EOS ids
};

// Called (on the scheduler thread) with each generated token and the text it completes: the
// incremental detokenization never splits a UTF-8 character, and text that could begin a stop
// string is held back until it cannot. Return false to cancel the request. Keep it short: the
// whole batch waits for it. It must not call Engine::generate (that waits for this thread).
using OnToken = std::function<bool(int32_t token, std::string_view text)>;

enum class FinishReason : uint8_t { length, stop, cancelled, error };
const char* to_string(FinishReason reason);

struct Result {
  std::string text;                // the completion, cut before a stop string; special tokens skipped
  std::vector<int32_t> token_ids;  // generated ids (a stop id that ended it included)
  FinishReason finish = FinishReason::length;
  std::string error;               // FinishReason::error: what failed
  int64_t prompt_tokens = 0;
  int preemptions = 0;             // times the sequence gave up its KV blocks and was recomputed
  double queue_seconds = 0;        // submit -> first step
  double first_token_seconds = 0;  // submit -> first token
  double total_seconds = 0;        // submit -> finished
};

struct EngineStats {
  int64_t steps = 0;                // forward steps run
  int64_t max_step_sequences = 0;   // the most sequences one step held
  int64_t prompt_tokens = 0;        // prefill tokens fed (recomputation after preemption included)
  int64_t generated_tokens = 0;
  int64_t preemptions = 0;
  int64_t kv_blocks = 0, kv_free_blocks = 0;
  int64_t running = 0, waiting = 0;  // sequences now
};

struct RequestState;  // shared between a handle and the scheduler

// A submitted request: wait for its Result or cancel it. Copies refer to the same request.
class RequestHandle {
 public:
  explicit RequestHandle(std::shared_ptr<RequestState> state) : state_(std::move(state)) {}
  void cancel() const;     // ends it with FinishReason::cancelled at the next step boundary
  bool done() const;
  Result wait() const;     // blocks until it finished

 private:
  std::shared_ptr<RequestState> state_;
};

class Engine {
 public:
  explicit Engine(const EngineOptions& options);  // loads the model; Error when it cannot
  ~Engine();  // cancels what is pending and joins the scheduler
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Blocking: the request's Result once it finished.
  Result generate(const Request& request, const OnToken& on_token = {});
  // Queues the request and returns at once.
  RequestHandle submit(const Request& request, const OnToken& on_token = {});

  const Tokenizer& tokenizer() const;
  // The checkpoint's chat template applied to `messages` (Error when the checkpoint has none).
  std::string apply_chat_template(const std::vector<Message>& messages, bool add_generation_prompt = true) const;
  // The token ids a request's prompt becomes (what generate() feeds the model).
  std::vector<int32_t> prompt_ids(const Request& request) const;

  int64_t max_model_len() const;
  const std::vector<int32_t>& eos_ids() const;
  EngineStats stats() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace mxmoe
