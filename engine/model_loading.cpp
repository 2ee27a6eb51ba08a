#include "engine/model_loading.h"

#include <algorithm>

#include "engine/error.h"
#include "engine/memory.h"
#include "loader/generation_config.h"

namespace mxmoe {

LoadedModel load_model(const ModelLoadOptions& options) {
  MXMOE_CHECK(options.device == Device::cpu || cuda_available(), "device cuda: no CUDA device is available");
  LoadedModel out;
  out.config = load_model_config(options.dir);
  out.tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_file(options.dir + "/tokenizer.json"));
  out.stop_ids = load_stop_ids(options.dir, out.config);
  ModelOptions model_options;
  model_options.quant = options.quant;
  model_options.device = options.device;
  out.model = make_causal_lm(out.config, model_options);
  LoadOptions load;
  load.quiet = options.quiet;
  load.gpu_memory_limit = options.gpu_memory_limit;
  if (options.device == Device::cuda) reset_device_memory_peak(current_device());
  out.report = load_weights(options.dir, options.format, out.model->loadables(), load);
  return out;
}

int64_t resolve_max_model_len(const ModelConfig& config, int64_t requested) {
  MXMOE_CHECK(requested >= 0, "max_model_len must be >= 0, got ", requested);
  MXMOE_CHECK(requested <= config.max_position_embeddings, "max_model_len ", requested,
              " exceeds the model's max_position_embeddings ", config.max_position_embeddings);
  return requested > 0 ? requested : std::min<int64_t>(config.max_position_embeddings, 8192);
}

}  // namespace mxmoe
