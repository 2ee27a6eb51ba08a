#pragma once
// Streams checkpoint tensors into the layers (engine/loadable.h), one layer at a time:
//   begin_loading()  ->  for each WeightSpec: the rank's slice (ShardSlice) read straight from
//   the mmap into pinned staging buffers (fixed-size chunks, several in flight, so a tensor of
//   any size streams through a fixed staging area; a gatherer thread with `copy_threads` workers
//   fills them ahead of the copies, across layer boundaries), copied to the GPU on a copy stream
//   and converted there when the checkpoint dtype differs from the destination's  ->
//   finish_loading() (the layer quantizes and frees its bf16 copy).
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
  // Staging (H100 box, Qwen3-30B-A3B layers from page cache, 16 threads): 3 x 16 MiB loaded at
  // 36.6-38.3 GB/s; 2 x 16, 4 x 16 and 3 x 32 MiB at 36.3, 4 x 8 MiB at 34.5. The host side is
  // the bottleneck, so threads matter more: 8 threads 32.5 GB/s, 12 37.2, 16 38.3.
  size_t staging_bytes = 16 << 20;  // per staging buffer (a multiple of 16)
  int staging_buffers = 3;          // in flight at once
  int copy_threads = 0;             // threads reading the mmap; 0: hardware threads (at most 32)
};

struct LoadReport {
  double seconds = 0;
  size_t tensors = 0;
  size_t bytes = 0;                 // checkpoint bytes read (this rank's slices) or dummy bytes generated
  size_t peak_gpu_bytes = 0;        // device_memory_stats peak during the load
  size_t resident_gpu_bytes = 0;    // in use when it ended
  std::vector<std::string> unexpected;  // checkpoint tensors that no layer asked for (sorted)
  // Where the loading thread's time went, in seconds: allocating and pinning the staging;
  // waiting for the gatherer (the host side is the bottleneck when this is large); waiting for a
  // layer's copies and checks to end on the GPU; the layers' begin_loading / finish_loading
  // (allocation, quantization). The rest of `seconds` is queuing copies and kernels.
  double staging_seconds = 0, gather_seconds = 0, wait_seconds = 0, layer_seconds = 0;
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
