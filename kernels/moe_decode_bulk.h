#pragma once
// MXFP8 decode expert kernels whose weights travel by 1-D bulk asynchronous copies
// (cp.async.bulk, sm_90) into a shared-memory ring, for moe_gate_up_decode / moe_down_decode
// (kernels/moe_decode.h, which checks the arguments and picks the kernel).
//
// Why: the tile kernel keeps its loads in flight in registers, ~16 KB per SM; at Qwen3-30B-A3B's
// small expert matrices that is not enough bytes in flight to reach the copy bandwidth. Here one
// thread per block keeps 3-8 whole 16-row tiles (~100-135 KB) of an expert's weights in flight.
// Measured slower all the same (H100, bench-moe, expert kernels alone, one run): Qwen3-30B-A3B T=1
// 40.4 us vs 24.8 for the tile kernel, T=8 200.7 vs 110.0 us: about 7-9 GB/s per SM, as if far less
// than the ring were in flight. Not yet profiled; so moe_*_decode run it only when asked
// (MoeDecodeTuning::kernel = bulk).
#include <cuda_runtime.h>

#include "engine/tensor.h"
#include "kernels/moe_permutation.h"
#include "kernels/mxfp8.h"

namespace mxmoe {

// Whether the bulk kernels take these expert stacks on this GPU: sm_90, K a multiple of 64, a
// 16-row tile (rows + their scales) within the ring's budget, every copy 16-byte aligned, whole
// tiles (gate/up: I a multiple of 8; down: H a multiple of 16).
// w13 [E, 2I, H]; w2 [E, H, I].
bool moe_bulk_gate_up_fits(const MxTensor& w13);
bool moe_bulk_down_fits(const MxTensor& w2);

// The same contracts as moe_gate_up_decode / moe_down_decode; arguments already checked and
// *_fits true. pdl: launch with programmatic stream serialization.
void moe_gate_up_bulk(const Tensor& x, const MxTensor& w13, const MoePermutation& perm, int top_k, const Tensor& act,
                      cudaStream_t stream, bool pdl);
void moe_down_bulk(const Tensor& act, const MxTensor& w2, const MoePermutation& perm, const Tensor& y,
                   cudaStream_t stream, bool pdl);

}  // namespace mxmoe
