#pragma once
// Streams checkpoint tensors into the layers (engine/loadable.h), one layer at a time:
//   begin_loading()  ->  for each WeightSpec: the rank's slice (ShardSlice) read straight from
//   the mmap into pinned staging buffers (fixed-size chunks, several in flight, so a tensor of
//   any size streams through a fixed staging area), copied to the GPU on a copy stream and
//   converted there when the checkpoint dtype differs from the destination's  ->  finish_loading()
//   (the layer quantizes and frees its bf16 copy).
// GPU peak while loading = what is already quantized + one layer in bf16 + the staging scratch
// (staging_buffers · staging_bytes, only when a dtype conversion is needed).
// Destinations on the CPU (reference backend) go through the same staging, converted on the CPU.
//
// Errors name the file and tensor: a missing tensor (unless optional), a shape that disagrees
// with the spec (i.e. with config.json), a dtype the engine cannot use, NaN/Inf in a weight
// (checked for every float destination while copying). Checkpoint tensors no layer asked for get
// one warning listing them.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/loadable.h"
#include "loader/checkpoint.h"

namespace mxmoe {

struct LoadOptions {
  uint64_t seed = 0;                // dummy weights: the same seed gives the same values
  size_t gpu_memory_limit = 0;      // bytes; > 0 caps the current GPU (set_device_memory_limit) and stays set
  bool quiet = false;               // no progress bar and no summary line
  // Staging: small chunks keep the per-layer pipeline fill/drain short (H100 box, Qwen3-30B-A3B
  // layers: 3 x 16 MiB loaded at 27.0 GB/s, 2 x 64 MiB at 19.1, 2 x 256 MiB at 10.3).
  size_t staging_bytes = 16 << 20;  // per staging buffer (a multiple of 16)
  int staging_buffers = 3;          // in flight at once
  int copy_threads = 0;             // threads reading the mmap; 0: min(8, hardware threads)
};

struct LoadReport {
  double seconds = 0;
  size_t tensors = 0;
  size_t bytes = 0;                 // checkpoint bytes read (this rank's slices) or dummy bytes generated
  size_t peak_gpu_bytes = 0;        // device_memory_stats peak during the load
  size_t resident_gpu_bytes = 0;    // in use when it ended
  std::vector<std::string> unexpected;  // checkpoint tensors that no layer asked for (sorted)
  double gb_per_s() const { return seconds > 0 ? double(bytes) / seconds / 1e9 : 0; }
};

// --load-format: "safetensors" (also "auto", as vLLM names the default) or "dummy".
enum class LoadFormat { safetensors, dummy };
LoadFormat parse_load_format(std::string_view name);

// The shape of a spec's slice: spec.shape with the shard's length along its dim.
Shape shard_shape(const WeightSpec& spec);

LoadReport load_weights(const Checkpoint& checkpoint, std::span<Loadable* const> layers,
                        const LoadOptions& options = {});

// --load-format dummy: the same calls, each destination filled on its device with
// normal(spec.dummy_mean, spec.dummy_std) values (kernels/convert.h fill_normal); a value depends
// only on (seed, tensor name, index in the full tensor), so TP shards are slices of one tensor.
LoadReport load_dummy_weights(std::span<Loadable* const> layers, const LoadOptions& options = {});

// What an app calls: the checkpoint at `path` (see Checkpoint), or dummy weights (path unused).
LoadReport load_weights(const std::string& path, LoadFormat format, std::span<Loadable* const> layers,
                        const LoadOptions& options = {});

}  // namespace mxmoe
