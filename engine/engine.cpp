// The Engine of engine/mxmoe.h: loads the model (engine/model_loading.h; under tensor parallelism
// the runtime of engine/tensor_parallel.h loads one shard per rank), sizes the KV cache, and hands
// requests to the continuous-batching scheduler (engine/scheduler.h) through a ModelRunner.
#include "engine/chat_template.h"
#include "engine/generator.h"
#include "engine/memory.h"
#include "engine/model_loading.h"
#include "engine/mxmoe.h"
#include "engine/scheduler.h"
#include "engine/tensor_parallel.h"
#include "loader/generation_config.h"

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
  ModelConfig config;
  std::unique_ptr<Tokenizer> tokenizer;
  std::vector<int32_t> stop_ids;
  int64_t max_len = 0;
  std::unique_ptr<ChatTemplate> chat_template;  // null when the checkpoint has none
  std::string chat_template_error;
  // tp = 1: the model, its KV cache and Generator here; tp > 1: the runtime holds one per rank.
  std::unique_ptr<CausalLM> model;
  std::unique_ptr<KvCache> cache;
  std::unique_ptr<Generator> generator;
  std::unique_ptr<TensorParallelRuntime> runtime;
  std::unique_ptr<ModelRunner> runner;
  std::unique_ptr<Scheduler> scheduler;  // last: its thread stops before the rest goes

  void load_one_device(const EngineOptions& options, const ModelLoadOptions& load, const KvCacheConfig& kv);
  void load_tensor_parallel(const EngineOptions& options, const ModelLoadOptions& load, const KvCacheConfig& kv);
};

void Engine::Impl::load_one_device(const EngineOptions& options, const ModelLoadOptions& load,
                                   const KvCacheConfig& kv) {
  LoadedModel loaded = load_model(load);
  config = loaded.config;
  tokenizer = std::move(loaded.tokenizer);
  stop_ids = loaded.stop_ids;
  model = std::move(loaded.model);
  max_len = resolve_max_model_len(config, options.max_model_len);
  KvCacheConfig geometry = model->kv_cache_config();
  geometry.block_size = kv.block_size;
  geometry.num_blocks = kv.num_blocks;
  geometry.memory_fraction = kv.memory_fraction;
  cache = std::make_unique<KvCache>(geometry, load.device);
  generator = std::make_unique<Generator>(*model, *cache);
  runner = std::make_unique<GeneratorRunner>(*generator);
}

void Engine::Impl::load_tensor_parallel(const EngineOptions& options, const ModelLoadOptions& load,
                                        const KvCacheConfig& kv) {
  TensorParallelOptions tp;
  tp.model_dir = load.dir;
  tp.load_format = load.format;
  tp.model.quant = load.quant;
  tp.model.device = load.device;
  tp.load.quiet = load.quiet;
  tp.load.gpu_memory_limit = load.gpu_memory_limit;  // each rank's GPU
  tp.kv_cache = kv;
  tp.local_ranks = options.tensor_parallel_size;
  MXMOE_CHECK(load.device == Device::cpu || cuda_available(), "device cuda: no CUDA device is available");
  runtime = std::make_unique<TensorParallelRuntime>(tp);  // each rank loads its shard
  config = runtime->config();
  tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_file(load.dir + "/tokenizer.json"));
  stop_ids = load_stop_ids(load.dir, config);
  max_len = resolve_max_model_len(config, options.max_model_len);
  runner = std::make_unique<TensorParallelRunner>(*runtime);
}

namespace {

Device parse_device(const std::string& name) {
  if (name.empty()) return cuda_available() ? Device::cuda : Device::cpu;
  MXMOE_CHECK(name == "cuda" || name == "cpu", "device must be cuda or cpu, got \"", name, "\"");
  return name == "cuda" ? Device::cuda : Device::cpu;
}

}  // namespace

Engine::Engine(const EngineOptions& options) : impl_(std::make_unique<Impl>()) {
  MXMOE_CHECK(options.tensor_parallel_size >= 1, "tensor_parallel_size must be >= 1, got ",
              options.tensor_parallel_size);
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
  // The pool: explicit, else 4 x max_model_len tokens on the CPU, else sized from free GPU memory
  // (each rank's, the smallest, under tensor parallelism).
  KvCacheConfig kv;
  kv.block_size = options.kv_block_size;
  kv.memory_fraction = options.kv_cache_memory_fraction;
  if (options.kv_cache_blocks > 0) {
    kv.num_blocks = options.kv_cache_blocks;
  } else if (load.device == Device::cpu) {
    const int64_t max_len = resolve_max_model_len(load_model_config(options.model), options.max_model_len);
    kv.num_blocks = 4 * ((max_len + kv.block_size - 1) / kv.block_size);
  }
  Impl& m = *impl_;
  if (options.tensor_parallel_size == 1)
    m.load_one_device(options, load, kv);
  else
    m.load_tensor_parallel(options, load, kv);
  try {
    m.chat_template = std::make_unique<ChatTemplate>(ChatTemplate::from_dir(options.model));
  } catch (const Error& e) {
    m.chat_template_error = e.what();
  }

  SchedulerOptions s;
  s.max_batch_size = options.max_batch_size;
  s.max_step_tokens = options.max_step_tokens;
  s.max_model_len = m.max_len;
  s.vocab_size = m.config.vocab_size;
  s.eos_ids = m.stop_ids;
  m.scheduler = std::make_unique<Scheduler>(*m.runner, *m.tokenizer, s);
}

Engine::~Engine() = default;

const Tokenizer& Engine::tokenizer() const { return *impl_->tokenizer; }

int64_t Engine::max_model_len() const { return impl_->max_len; }

const std::vector<int32_t>& Engine::eos_ids() const { return impl_->stop_ids; }

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
  if (!request.ignore_eos) s.stop_ids = impl_->stop_ids;
  s.stop_ids.insert(s.stop_ids.end(), request.stop_ids.begin(), request.stop_ids.end());
  s.on_token = on_token;
  return RequestHandle(impl_->scheduler->submit(std::move(s)));
}

Result Engine::generate(const Request& request, const OnToken& on_token) { return submit(request, on_token).wait(); }

}  // namespace mxmoe
