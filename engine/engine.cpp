// The Engine of engine/mxmoe.h: loads the model (engine/model_loading.h), sizes the KV cache, and
// hands requests to the continuous-batching scheduler (engine/scheduler.h).
#include "engine/chat_template.h"
#include "engine/generator.h"
#include "engine/memory.h"
#include "engine/model_loading.h"
#include "engine/mxmoe.h"
#include "engine/scheduler.h"

namespace mxmoe {

const char* to_string(FinishReason reason) {
  switch (reason) {
    case FinishReason::length: return "length";
    case FinishReason::stop: return "stop";
    case FinishReason::cancelled: return "cancelled";
    case FinishReason::error: return "error";
  }
  return "?";
}

void RequestHandle::cancel() const { state_->cancel = true; }

bool RequestHandle::done() const {
  std::lock_guard lock(state_->mutex);
  return state_->done;
}

Result RequestHandle::wait() const {
  std::unique_lock lock(state_->mutex);
  state_->finished.wait(lock, [&] { return state_->done; });
  return state_->result;
}

struct Engine::Impl {
  LoadedModel loaded;
  int64_t max_len = 0;
  std::unique_ptr<ChatTemplate> chat_template;  // null when the checkpoint has none
  std::string chat_template_error;
  std::unique_ptr<KvCache> cache;
  std::unique_ptr<Generator> generator;
  std::unique_ptr<Scheduler> scheduler;  // last: its thread stops before the rest goes
};

namespace {

Device parse_device(const std::string& name) {
  if (name.empty()) return cuda_available() ? Device::cuda : Device::cpu;
  MXMOE_CHECK(name == "cuda" || name == "cpu", "device must be cuda or cpu, got \"", name, "\"");
  return name == "cuda" ? Device::cuda : Device::cpu;
}

}  // namespace

Engine::Engine(const EngineOptions& options) : impl_(std::make_unique<Impl>()) {
  MXMOE_CHECK(options.tensor_parallel_size == 1, "tensor_parallel_size ", options.tensor_parallel_size,
              ": the Engine runs on one device in this version; tensor parallelism runs through run-model (--tp)");
  MXMOE_CHECK(options.quantization == "mxfp8" || options.quantization == "bf16",
              "quantization must be mxfp8 or bf16, got \"", options.quantization, "\"");
  MXMOE_CHECK(options.kv_block_size > 0 && (options.kv_block_size & (options.kv_block_size - 1)) == 0,
              "kv_block_size must be a power of two, got ", options.kv_block_size);
  MXMOE_CHECK(options.kv_cache_blocks >= 0, "kv_cache_blocks must be >= 0, got ", options.kv_cache_blocks);
  MXMOE_CHECK(options.kv_cache_memory_fraction > 0 && options.kv_cache_memory_fraction <= 1,
              "kv_cache_memory_fraction must be in (0, 1], got ", options.kv_cache_memory_fraction);
  MXMOE_CHECK(options.gpu_memory_limit_gb >= 0, "gpu_memory_limit_gb must be >= 0, got ", options.gpu_memory_limit_gb);
  ModelLoadOptions load;
  load.dir = options.model;
  load.quant.scheme = options.quantization;
  load.device = parse_device(options.device);
  load.format = parse_load_format(options.load_format);
  load.gpu_memory_limit = size_t(options.gpu_memory_limit_gb * double(1ull << 30));
  load.quiet = options.quiet;
  Impl& m = *impl_;
  m.loaded = load_model(load);
  m.max_len = resolve_max_model_len(m.loaded.config, options.max_model_len);
  try {
    m.chat_template = std::make_unique<ChatTemplate>(ChatTemplate::from_dir(options.model));
  } catch (const Error& e) {
    m.chat_template_error = e.what();
  }

  KvCacheConfig kv = m.loaded.model->kv_cache_config();
  kv.block_size = options.kv_block_size;
  kv.memory_fraction = options.kv_cache_memory_fraction;
  const int64_t blocks_per_sequence = (m.max_len + kv.block_size - 1) / kv.block_size;
  kv.num_blocks = options.kv_cache_blocks ? options.kv_cache_blocks
                  : load.device == Device::cpu ? 4 * blocks_per_sequence
                                               : 0;  // sized from free GPU memory
  m.cache = std::make_unique<KvCache>(kv, load.device);
  m.generator = std::make_unique<Generator>(*m.loaded.model, *m.cache);

  SchedulerOptions s;
  s.max_batch_size = options.max_batch_size;
  s.max_step_tokens = options.max_step_tokens;
  s.max_model_len = m.max_len;
  s.vocab_size = m.loaded.config.vocab_size;
  s.eos_ids = m.loaded.stop_ids;
  // The step seam: one Generator today; a tensor-parallel fan-out over rank threads later.
  Generator& generator = *m.generator;
  m.scheduler = std::make_unique<Scheduler>(
      [&generator](std::span<const int> seqs, const std::vector<std::vector<int32_t>>& tokens,
                   const std::vector<int32_t>& logit_rows) { return generator.step(seqs, tokens, logit_rows); },
      *m.cache, generator.stream(), *m.loaded.tokenizer, s);
}

Engine::~Engine() = default;

const Tokenizer& Engine::tokenizer() const { return *impl_->loaded.tokenizer; }

int64_t Engine::max_model_len() const { return impl_->max_len; }

const std::vector<int32_t>& Engine::eos_ids() const { return impl_->loaded.stop_ids; }

EngineStats Engine::stats() const { return impl_->scheduler->stats(); }

std::string Engine::apply_chat_template(const std::vector<Message>& messages, bool add_generation_prompt) const {
  MXMOE_CHECK(impl_->chat_template, impl_->chat_template_error);
  nlohmann::ordered_json json = nlohmann::ordered_json::array();
  for (const Message& message : messages) json.push_back({{"role", message.role}, {"content", message.content}});
  return impl_->chat_template->render(json, add_generation_prompt);
}

std::vector<int32_t> Engine::prompt_ids(const Request& request) const {
  const int given = int(!request.prompt.empty()) + int(!request.prompt_ids.empty()) + int(!request.messages.empty());
  MXMOE_CHECK(given == 1, "a request needs exactly one of prompt, prompt_ids and messages; it has ", given);
  if (!request.prompt_ids.empty()) return request.prompt_ids;
  if (!request.prompt.empty()) return tokenizer().encode(request.prompt, true);
  // The template writes the special tokens itself.
  return tokenizer().encode(apply_chat_template(request.messages, true), false);
}

RequestHandle Engine::submit(const Request& request, const OnToken& on_token) {
  SequenceRequest s;
  s.prompt = prompt_ids(request);
  s.sampling = to_sampling_params(request.sampling);
  s.max_new_tokens = request.max_new_tokens;
  s.stop = request.stop;
  if (!request.ignore_eos) s.stop_ids = impl_->loaded.stop_ids;
  s.stop_ids.insert(s.stop_ids.end(), request.stop_ids.begin(), request.stop_ids.end());
  s.on_token = on_token;
  return RequestHandle(impl_->scheduler->submit(std::move(s)));
}

Result Engine::generate(const Request& request, const OnToken& on_token) { return submit(request, on_token).wait(); }

}  // namespace mxmoe
