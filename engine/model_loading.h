#pragma once
// The loading sequence every front end shares: config.json -> model (quantized while loading)
// -> tokenizer and stop ids, and the KV cache geometry for a maximum sequence length.
// run-model's own copy of these steps can move here; the Engine (engine/engine.cpp) uses it.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/tokenizer.h"
#include "loader/weight_loader.h"
#include "models/model.h"

namespace mxmoe {

struct ModelLoadOptions {
  std::string dir;                     // Hugging Face checkpoint directory (tokenizer.json always read from it)
  QuantConfig quant;                   // mxfp8 (default) or bf16
  Device device = Device::cuda;
  LoadFormat format = LoadFormat::safetensors;
  size_t gpu_memory_limit = 0;         // bytes; 0 = no cap
  bool quiet = false;                  // no load progress
};

struct LoadedModel {
  ModelConfig config;
  std::unique_ptr<CausalLM> model;
  std::unique_ptr<Tokenizer> tokenizer;
  std::vector<int32_t> stop_ids;       // EOS ids of config.json and generation_config.json
  LoadReport report;
};

LoadedModel load_model(const ModelLoadOptions& options);

// The longest prompt + completion: `requested` when > 0 (an Error past max_position_embeddings),
// else min(max_position_embeddings, 8192).
int64_t resolve_max_model_len(const ModelConfig& config, int64_t requested);

}  // namespace mxmoe
