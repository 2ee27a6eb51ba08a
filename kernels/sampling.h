#pragma once
// Token sampling on the device for a batch of rows, each with its own parameters, in Hugging
// Face's processor order: repetition penalty -> temperature -> top-k -> top-p -> min-p -> draw.
//   repetition penalty: logits of the row's previous tokens: positive / penalty, negative · penalty
//   temperature 0: greedy (argmax of the penalized logits, ties -> lowest id); filters are ignored
//   top-k: keep logits >= the k-th largest; top-p: keep token t iff the probability mass of the
//   tokens ranked above it is < top_p (the smallest nucleus reaching top_p; tokens tied with its
//   smallest logit are all kept); min-p: keep p >= min_p · p_max. The draw takes the kept tokens
//   in id order.
// The random number of a draw is a counter-based hash of (seed, step): the same seed and step give
// the same token regardless of batch position or launch. Probability masses are summed in 40-bit
// fixed point (exp(x − max) · 2^40 as integers), so every sum, and the result, is deterministic.
// No host synchronization: parameters live in device memory, the call is graph-capturable.
#include <cuda_runtime.h>

#include <cstdint>
#include <span>
#include <vector>

#include "engine/tensor.h"
#include "kernels/hash.h"
#include "kernels/mxfp8_format.h"  // MXMOE_HD

namespace mxmoe {

struct SamplingParams {
  float temperature = 1.f;         // 0: greedy
  int32_t top_k = 0;               // 0 (or >= vocab): off
  float top_p = 1.f;               // 1: off; (0, 1]
  float min_p = 0.f;               // 0: off; [0, 1]
  float repetition_penalty = 1.f;  // 1: off; > 0
  uint32_t reserved = 0;
  uint64_t seed = 0;
  uint64_t step = 0;               // the row's draw counter (tokens generated so far)
};
static_assert(sizeof(SamplingParams) == 40);

void check_sampling_params(const SamplingParams& p);  // Error naming the bad value

// The random number of a draw: a counter hash (kernels/hash.h) of the seed and the step.
MXMOE_HD uint64_t sampling_random(uint64_t seed, uint64_t step) { return mix64(seed ^ mix64(step)); }

namespace sampling_detail {
// Float -> unsigned key with the same order (larger float, larger key).
MXMOE_HD uint32_t order_key(float x) {
  const uint32_t b = f32_bits(x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
MXMOE_HD uint64_t fixed_mass(float e) { return uint64_t(e * 1099511627776.f); }  // e in [0, 1] -> e · 2^40
MXMOE_HD float penalized(float x, float penalty) { return x < 0.f ? x * penalty : x / penalty; }
// floor(a · b / 2^64): a uniform 64-bit b scales a total mass a to a point in [0, a).
MXMOE_HD uint64_t mul_hi64(uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH__)
  return __umul64hi(a, b);
#else
  __extension__ typedef unsigned __int128 u128;
  return uint64_t((u128(a) * b) >> 64);
#endif
}
}  // namespace sampling_detail

// logits: f32 or bf16 [B, V] contiguous; params: B SamplingParams in device memory (u8 [B·40]);
// prev_offsets: i32 [B + 1] and prev_ids: i32 [N]: row b's previous tokens are
// prev_ids[prev_offsets[b] .. prev_offsets[b+1]) (ids outside [0, V) are ignored);
// workspace: f32 [B, V] (holds the rows only when a slice of V / 8 floats exceeds 200 KiB of
// shared memory); tokens: i32 [B] (output). A cluster of 8 CTAs samples each row.
void sample(const Tensor& logits, const Tensor& params, const Tensor& prev_offsets, const Tensor& prev_ids,
            const Tensor& workspace, const Tensor& tokens, cudaStream_t stream);

// CPU reference of one row: the same algorithm (same fixed-point sums, same random number), so it
// returns the same token as the kernel except where exp() rounds differently at a boundary.
int32_t sample_row_ref(std::span<const float> logits, const SamplingParams& p, std::span<const int32_t> prev);
// The distribution the filters leave, computed independently of the kernel's method: Hugging
// Face's steps with a full sort, in double. Greedy: all mass on the argmax.
std::vector<double> sampling_distribution_ref(std::span<const float> logits, const SamplingParams& p,
                                              std::span<const int32_t> prev);
// CPU backend entry point: same contract as sample() on CPU tensors (no workspace).
void sample_ref(const Tensor& logits, std::span<const SamplingParams> params, const Tensor& prev_offsets,
                const Tensor& prev_ids, const Tensor& tokens);

}  // namespace mxmoe
