#pragma once
// The contract between the loader and the layers (see DESIGN.md, "Data flow").
//
// A layer lists the checkpoint tensors it needs (weight_specs). The loader streams a layer's
// tensors one layer at a time:
//   begin_loading()        the layer allocates its full-precision (bf16) load buffers
//   weight_dest(i)         where spec i's (TP-sliced) data goes; the loader converts the
//                          checkpoint dtype (bf16/f16/f32) to the destination's dtype
//   finish_loading()       all tensors arrived: the layer's method runs
//                          process_weights_after_loading() (e.g. quantizes to MXFP8) and frees
//                          the bf16 buffers, so peak memory stays near the quantized size
// Dummy weights (--load-format dummy) go through the same calls with random data.
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace mxmoe {

// Which part of the checkpoint tensor this rank reads (tensor parallelism).
struct ShardSlice {
  int dim = -1;        // -1: the whole tensor
  int64_t begin = 0;   // along dim
  int64_t length = 0;  // along dim
};

struct WeightSpec {
  std::string name;      // checkpoint tensor name, e.g. "model.layers.0.self_attn.q_proj.weight"
  Shape shape;           // full shape in the checkpoint (a mismatch is an error naming both)
  ShardSlice shard;      // part this rank reads
  float dummy_std = 0.02f;  // scale of --load-format dummy values (norm weights use mean 1: see dummy_mean)
  float dummy_mean = 0.f;
  bool optional = false;    // missing from the checkpoint is not an error (e.g. a bias some models lack)
};

class Loadable {
 public:
  virtual ~Loadable() = default;
  virtual std::string loadable_name() const = 0;  // e.g. "model.layers.3.mlp.experts", for messages
  virtual std::vector<WeightSpec> weight_specs() const = 0;
  virtual void begin_loading() = 0;
  virtual Tensor weight_dest(size_t spec_index) = 0;  // valid between begin and finish
  virtual void finish_loading() = 0;
};

}  // namespace mxmoe
