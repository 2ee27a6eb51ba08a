#pragma once
// Token -> expert routing as a permutation (built on the device by kernels/moe_permute.h).
// A "pair" p = t * top_k + slot is token t's slot-th routed expert.
#include "engine/tensor.h"

namespace mxmoe {

struct MoePermutation {
  Tensor expert_offsets;  // [E + 1] i32: pairs of expert e are sorted_pairs[offsets[e] : offsets[e + 1]]
  Tensor sorted_pairs;    // [T * top_k] i32: pair ids grouped by expert, ascending within an expert
  Tensor active_experts;  // [E] i32: experts with >= 1 pair, ascending, then -1 (E - num_active times)
  Tensor num_active;      // [1] i32
};

}  // namespace mxmoe
