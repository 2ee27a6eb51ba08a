// Bulk-copy decode expert kernels (see kernels/moe_decode_bulk.h).
//
// Work: the active experts' 16-row tiles, flattened (slot-major: num_active · tiles, read on the
// device, so no host sync and graph-capturable) and cut into one contiguous range per block; the
// grid is one block per SM (the ring takes most of the shared memory).
//   gate/up tile j: gate rows 8j..8j+7 and the matching up rows I+8j.. (mma rows 0-7 and 8-15), so
//                   SiLU(gate)·up is formed after the reduction; act [T·k, I] bf16.
//   down tile j:    rows 16j..16j+15 of W2_e; y [T·k, H] f32 per pair.
// A tile's rows are contiguous in memory (elements and scales), so it arrives in 2 (down) or 4
// (gate/up) 1-D bulk copies on one mbarrier. Thread 0 keeps `stages` tiles in flight: it fills the
// ring up front and refills a slot as soon as the block's reduction barrier shows every warp done
// with it. The 8 warps split the tile's K in 64-k steps (mma m16n8k16 as in kernels/w8a16_dot.cuh,
// fp8 -> bf16 operands by Fp8Rows::operands), then sum their partials in shared memory.
// Activations (the expert's token rows, <= 8·NT per pass) are staged in shared memory whenever the
// expert changes; experts with more pairs loop over passes against the same ring slot.
#include "kernels/moe_decode_bulk.h"

#include "kernels/w8a16_dot.cuh"
#include "kernels/w8a16_gemm_tma.cuh"

namespace mxmoe {

namespace {

using namespace w8a16;

constexpr int kMaxStages = 8;
constexpr size_t kRingBudget = 144 * 1024;  // 4 Qwen3-30B-A3B gate/up tiles (33 KB each)
constexpr size_t kBarBytes = 128;           // the stage barriers; the ring starts 128-aligned

struct BulkParams {
  const uint8_t* elems;         // [E, R, K] e4m3
  const uint8_t* scales;        // [E, R, K/32] e8m0
  const int* offsets;           // [E + 1]
  const int* pairs;             // [T·k]
  const int* active;            // [E]
  const int* num_active;        // [1]
  const __nv_bfloat16* x;       // gate/up: x [T, K], row pair / top_k; down: act [T·k, K], row pair
  void* out;                    // gate/up: act [T·k, R/2] bf16; down: y [T·k, R] f32
  int64_t k;                    // K
  int64_t rows;                 // R: rows per expert (2I or H)
  int tiles;                    // tiles per expert
  int top_k;                    // gate/up: pairs per token; down: 1
  int stages;                   // ring slots, <= kMaxStages
  int x_stride;                 // bf16 per staged token row: K + kXPad
  uint32_t stage_bytes;         // one slot: [16][K] e4m3 then [16][K/32] e8m0, rounded to 128
};

// One 1-D bulk copy global -> this block's shared memory, completing `bytes` on `bar`.
__device__ __forceinline__ void bulk_load(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
#if defined(MXMOE_HAS_WGMMA)
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                   smem_addr(dst)),
               "l"(src), "r"(bytes), "r"(smem_addr(bar))
               : "memory");
#else
  (void)dst, (void)src, (void)bytes, (void)bar;
#endif
}

template <bool kGateUp, int NT>
__global__ void __launch_bounds__(kThreads, 1) bulk_kernel(const BulkParams p) {
#if defined(MXMOE_HAS_WGMMA)
  extern __shared__ __align__(128) unsigned char smem[];
  auto* full = reinterpret_cast<uint64_t*>(smem);  // [stages]
  unsigned char* ring = smem + kBarBytes;           // [stages][stage_bytes]
  auto* xs = reinterpret_cast<__nv_bfloat16*>(ring + size_t(p.stages) * p.stage_bytes);  // [NT·8][x_stride]
  auto* red = reinterpret_cast<float*>(xs + NT * 8 * p.x_stride);  // [2][kWarps][NT][4][32]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int64_t k = p.k, kscales = k / kMxBlock;

  if (threadIdx.x == 0) {
    for (int s = 0; s < p.stages; ++s) mbar_init(&full[s], 1);
    mbar_fence_init();
  }
  __syncthreads();

  // The routing is gate/up's previous kernel's output; down's comes from two kernels back (see
  // kernels/moe_decode.h), so down streams its first tiles while gate/up finishes.
  if constexpr (kGateUp) grid_dependency_wait();
  const int64_t total = int64_t(__ldcg(p.num_active)) * p.tiles;
  const int64_t begin = total * blockIdx.x / gridDim.x, end = total * (blockIdx.x + 1) / gridDim.x;
  const auto issue = [&](int64_t tile) {  // thread 0: tile -> its ring slot
    const int i = int(tile - begin), slot = i % p.stages;
    const int64_t e = __ldcg(p.active + tile / p.tiles), j = tile % p.tiles;
    unsigned char* dst = ring + size_t(slot) * p.stage_bytes;
    uint64_t* bar = &full[slot];
    mbar_arrive_expect_tx(bar, uint32_t(16 * (k + kscales)));
    // Runs of rows: gate/up 8 gate + 8 up rows, down 16 rows.
    constexpr int kRuns = kGateUp ? 2 : 1, kRunRows = 16 / kRuns;
#pragma unroll
    for (int r = 0; r < kRuns; ++r) {
      const int64_t row = e * p.rows + r * (p.rows / 2) + j * kRunRows;
      bulk_load(dst + r * kRunRows * k, p.elems + row * k, uint32_t(kRunRows * k), bar);
      bulk_load(dst + 16 * k + r * kRunRows * kscales, p.scales + row * kscales, uint32_t(kRunRows * kscales), bar);
    }
  };
  if (begin < end && threadIdx.x == 0)
    for (int i = 0; i < p.stages && begin + i < end; ++i) issue(begin + i);
  if constexpr (!kGateUp) grid_dependency_wait();
  launch_dependents();
  if (begin >= end) return;

  int64_t staged = -1;  // (expert slot << 32) | m0 of the token rows in xs
  int passes = 0;       // reductions so far: red is double-buffered
  for (int64_t tile = begin; tile < end; ++tile) {
    const int i = int(tile - begin), slot = i % p.stages;
    const int64_t es = tile / p.tiles, j = tile % p.tiles;
    const int e = __ldcg(p.active + es);
    const int first = __ldcg(p.offsets + e), count = __ldcg(p.offsets + e + 1) - first;  // >= 1: e is active
    const unsigned char* w = ring + size_t(slot) * p.stage_bytes;  // [16][K] e4m3
    const unsigned char* sc = w + 16 * k;                          // [16][K/32] e8m0
    mbar_wait(&full[slot], uint32_t(i / p.stages) & 1u);

    for (int m0 = 0; m0 < count; m0 += NT * 8) {
      const int mcount = min(count - m0, NT * 8);
      if (const int64_t key = (es << 32) | m0; key != staged) {
        // Stage the pass's token rows, groups of 4 interleaved (x0, x2, x1, x3). Every earlier
        // reader of xs passed the previous reduction's barrier.
        const int vecs = int(k / 8);
        for (int v = threadIdx.x; v < mcount * vecs; v += kThreads) {
          const int m = v / vecs, c = v % vecs;
          const int pair = __ldcg(p.pairs + first + m0 + m);
          const __nv_bfloat16* src = p.x + int64_t(kGateUp ? pair / p.top_k : pair) * k;
          const uint4 in = *reinterpret_cast<const uint4*>(src + int64_t(c) * 8);
          uint4 o;
          interleave(in.x, in.y, o.x, o.y);
          interleave(in.z, in.w, o.z, o.w);
          *reinterpret_cast<uint4*>(xs + m * p.x_stride + c * 8) = o;
        }
        __syncthreads();
        staged = key;
      }

      float acc[NT][4] = {};
      const int steps = int(k / kStepK);
#pragma unroll 2
      for (int s = warp; s < steps; s += kWarps) {
        const int col = s * kStepK + t * kLaneK;
        const Fp8Rows::Chunk c0{*reinterpret_cast<const uint4*>(w + g * k + col), sc[g * kscales + col / kMxBlock]};
        const Fp8Rows::Chunk c1{*reinterpret_cast<const uint4*>(w + (g + 8) * k + col),
                                sc[(g + 8) * kscales + col / kMxBlock]};
        uint32_t a0[8], a1[8];
        Fp8Rows::operands(c0, a0);
        Fp8Rows::operands(c1, a1);
#pragma unroll
        for (int h = 0; h < NT; ++h) {
          const int m = h * 8 + g;
          uint4 xa = make_uint4(0, 0, 0, 0), xb = xa;
          if (m < mcount) {
            const uint4* src = reinterpret_cast<const uint4*>(xs + m * p.x_stride + col);
            xa = src[0];
            xb = src[1];
          }
          mma_bf16(acc[h], a0[0], a1[0], a0[1], a1[1], xa.x, xa.y);
          mma_bf16(acc[h], a0[2], a1[2], a0[3], a1[3], xa.z, xa.w);
          mma_bf16(acc[h], a0[4], a1[4], a0[5], a1[5], xb.x, xb.y);
          mma_bf16(acc[h], a0[6], a1[6], a0[7], a1[7], xb.z, xb.w);
        }
      }

      float* buf = red + (passes++ & 1) * (kWarps * NT * 4 * 32);
#pragma unroll
      for (int h = 0; h < NT; ++h)
#pragma unroll
        for (int q = 0; q < 4; ++q) buf[((warp * NT + h) * 4 + q) * 32 + lane] = acc[h][q];
      __syncthreads();  // partials written; every warp is done with this slot and xs
      if (threadIdx.x == 0 && m0 + NT * 8 >= count && tile + p.stages < end) issue(tile + p.stages);
      if (threadIdx.x < NT * 32) {
        const int h = threadIdx.x / 32, gg = lane >> 2, tt = lane & 3;
        float v[4] = {};
        for (int ww = 0; ww < kWarps; ++ww)
#pragma unroll
          for (int q = 0; q < 4; ++q) v[q] += buf[((ww * NT + h) * 4 + q) * 32 + lane];
        // v = (row gg, tokens 2tt, 2tt+1), (row gg + 8, same tokens) of the pass's 8-token tile h.
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          const int m = m0 + h * 8 + 2 * tt + q;
          if (m >= count) continue;
          const int64_t pair = __ldcg(p.pairs + first + m);
          if constexpr (kGateUp) {
            const int64_t inter = p.rows / 2;
            static_cast<__nv_bfloat16*>(p.out)[pair * inter + j * 8 + gg] = __float2bfloat16(silu(v[q]) * v[2 + q]);
          } else {
            float* y = static_cast<float*>(p.out) + pair * p.rows + j * 16 + gg;
            y[0] = v[q];
            y[8] = v[2 + q];
          }
        }
      }
    }
  }
#else
  (void)p;
  __trap();  // moe_bulk_*_fits is false off sm_90
#endif
}

void check_fits(bool ok, const char* op) {
  MXMOE_CHECK(ok, op, ": the bulk expert kernel does not take this shape or GPU (see moe_bulk_*_fits)");
}

// w [E, R, K]; a tile is one run of 16 rows (down) or two runs of 8 (gate/up: gate, up at R/2).
bool fits(const MxTensor& w, bool gate_up) {
  const int64_t rows = w.elems.size(1), k = w.elems.size(2), kscales = k / kMxBlock, run = gate_up ? 8 : 16;
  const size_t stage = size_t(16 * (k + kscales) + 127) / 128 * 128;
  const bool aligned = reinterpret_cast<uintptr_t>(w.elems.data()) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(w.scales.data()) % 16 == 0 && (rows * kscales) % 16 == 0 &&
                       (run * kscales) % 16 == 0 && (!gate_up || (rows / 2 * kscales) % 16 == 0);
  return gpu_info().major == 9 && k % kStepK == 0 && rows % 16 == 0 && aligned && 3 * stage <= kRingBudget;
}

template <bool kGateUp, int NT>
void launch(BulkParams p, int64_t max_jobs, cudaStream_t stream, bool pdl) {
  const auto kernel = bulk_kernel<kGateUp, NT>;
  const size_t x_bytes = (size_t(NT) * 8 * size_t(p.x_stride) * 2 + 15) / 16 * 16;
  const size_t red_bytes = 2 * size_t(kWarps) * NT * 4 * 32 * sizeof(float);
  const size_t limit = size_t(gpu_info().max_smem_per_block);
  const size_t ring = std::min(kRingBudget, limit - kBarBytes - x_bytes - red_bytes);
  p.stages = int(std::min<size_t>(kMaxStages, ring / p.stage_bytes));
  MXMOE_CHECK(p.stages >= 2, "moe bulk decode: K = ", p.k, " leaves ", p.stages, " ring slots");
  const size_t smem = kBarBytes + size_t(p.stages) * p.stage_bytes + x_bytes + red_bytes;
  static std::atomic<uint64_t> ready{0};
  const uint64_t bit = uint64_t(1) << (current_device() & 63);
  if (!(ready.load() & bit)) {
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(limit)));
    ready.fetch_or(bit);
  }
  cudaLaunchAttribute attr;
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(unsigned(std::min<int64_t>(gpu_info().sm_count, max_jobs)));
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = &attr;
  cfg.numAttrs = pdl ? 1 : 0;
  CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, p));
}

BulkParams params(const MxTensor& w, const MoePermutation& perm, const Tensor& in, const Tensor& out, int tiles,
                  int top_k) {
  BulkParams p;
  p.elems = w.elems.data_as<const uint8_t>();
  p.scales = w.scales.data_as<const uint8_t>();
  p.offsets = perm.expert_offsets.data_as<const int>();
  p.pairs = perm.sorted_pairs.data_as<const int>();
  p.active = perm.active_experts.data_as<const int>();
  p.num_active = perm.num_active.data_as<const int>();
  p.x = in.data_as<const __nv_bfloat16>();
  p.out = out.data();
  p.k = w.elems.size(2);
  p.rows = w.elems.size(1);
  p.tiles = tiles;
  p.top_k = top_k;
  p.stages = 0;
  p.x_stride = int(p.k) + kXPad;
  p.stage_bytes = uint32_t((16 * (p.k + p.k / kMxBlock) + 127) / 128 * 128);
  return p;
}

}  // namespace

bool moe_bulk_gate_up_fits(const MxTensor& w13) { return fits(w13, true); }
bool moe_bulk_down_fits(const MxTensor& w2) { return fits(w2, false); }

void moe_gate_up_bulk(const Tensor& x, const MxTensor& w13, const MoePermutation& perm, int top_k, const Tensor& act,
                      cudaStream_t stream, bool pdl) {
  check_fits(moe_bulk_gate_up_fits(w13), "moe_gate_up_decode");
  const int64_t experts = w13.elems.size(0), pairs = act.size(0), tiles = w13.elems.size(1) / 16;
  const BulkParams p = params(w13, perm, x, act, int(tiles), top_k);
  // Token rows per pass: one 8-token mma tile when T <= 8, else two (as the tile kernel).
  if (x.size(0) <= 8)
    launch<true, 1>(p, std::min(experts, pairs) * tiles, stream, pdl);
  else
    launch<true, 2>(p, std::min(experts, pairs) * tiles, stream, pdl);
}

void moe_down_bulk(const Tensor& act, const MxTensor& w2, const MoePermutation& perm, const Tensor& y,
                   cudaStream_t stream, bool pdl) {
  check_fits(moe_bulk_down_fits(w2), "moe_down_decode");
  const int64_t experts = w2.elems.size(0), pairs = act.size(0), tiles = w2.elems.size(1) / 16;
  const BulkParams p = params(w2, perm, act, y, int(tiles), 1);
  if (pairs <= 8)
    launch<false, 1>(p, std::min(experts, pairs) * tiles, stream, pdl);
  else
    launch<false, 2>(p, std::min(experts, pairs) * tiles, stream, pdl);
}

}  // namespace mxmoe
