// Tensor-core prefill attention (FlashAttention-2 style) over the paged KV cache; same contract
// as paged_attention (kernels/attention.h), which calls it when sequences have many queries.
//
// Work split: one CTA per (tile of kBM = 64 query rows of one sequence, query head); each of its
// 4 warps owns 16 query rows. K/V tiles of kBN = 64 keys stream through shared memory in a ring
// of kStages buffers filled by cp.async, rows gathered through the block table. S = Q·Kᵀ and
// O += P·V run on mma.m16n8k16 (operands by ldmatrix, V by ldmatrix.trans); the softmax is online
// in fp32 registers in the exp2 domain, P goes to the second mma as bf16. Only key tiles that
// cross a warp's causal diagonal are masked, and the CTA stops after its last row's diagonal.
// Query heads sharing a KV head are neighbours in the grid (x), so they run at the same time and
// read the same K/V tiles through L2.
//
// Tiles: sequence s's query tiles are numbered from first(s) = floor(cu_seqlens[s] / kBM) + s.
// first() strictly increases and first(s) + ceil(q_len(s) / kBM) <= first(s + 1), so the grid
// spans floor(T / kBM) + S tiles and a CTA finds its sequence by a binary search over cu_seqlens
// on the device (no host copy of the lengths: the decoder's are device-resident). Tiles past a
// sequence's queries exit at once. Tiles run in reverse order so the long late causal tiles start
// first and short ones fill the tail.
//
// Shared memory: tiles of [rows][head_dim] bf16 with the 16-byte chunks of row r XOR-swizzled by
// r % 8, so the 8 rows an ldmatrix phase reads hit distinct banks.
#include <cuda_bf16.h>

#include <atomic>
#include <cmath>

#include "engine/cuda_check.h"
#include "engine/error.h"
#include "engine/memory.h"
#include "kernels/attention_prefill.cuh"
#include "kernels/w8a16_dot.cuh"      // mma_bf16
#include "kernels/w8a16_gemm_ptx.cuh"  // cp_async16 / commit / wait

namespace mxmoe::attention_detail {

namespace {

using w8a16::cp_async16;
using w8a16::cp_async_commit;
using w8a16::cp_async_wait;
using w8a16::mma_bf16;

constexpr int kBM = 64, kBN = 64, kWarps = 4, kThreads = 32 * kWarps;

// Three stages (112 KB at head_dim 128) still let two CTAs share an SM; head_dim 256 takes two.
template <int HD>
constexpr int kStages = HD <= 128 ? 3 : 2;
template <int HD>
constexpr int kSmemBytes = (kBM + 2 * kStages<HD> * kBN) * HD * 2;  // Q, then K and V per stage

// Byte offset of 16-byte chunk c of row r in a swizzled [rows][HD] bf16 tile.
template <int HD>
__device__ __forceinline__ uint32_t tile_offset(int r, int c) {
  return uint32_t(r * HD * 2 + ((c ^ (r & 7)) << 4));
}

// Four 8x8 bf16 matrices from shared memory; lane l gives the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&d)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&d)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
               : "r"(addr));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

template <int HD>
__global__ void __launch_bounds__(kThreads) prefill_kernel(Args a) {
  constexpr int kChunks = HD / 8;                // 16-byte chunks per row
  constexpr int kRowStep = kThreads / kChunks;   // rows one pass of the CTA's copies covers
  constexpr int kSteps = HD / 16;                // mma k-steps over the head dimension
  constexpr int S = kStages<HD>;
  constexpr bool kQInRegs = HD <= 128;           // at 256 the fragments would crowd out O
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t smem_q = uint32_t(__cvta_generic_to_shared(smem));
  const auto k_tile = [](int stage) { return (kBM + 2 * stage * kBN) * HD * 2; };  // byte offsets
  const auto v_tile = [](int stage) { return (kBM + (2 * stage + 1) * kBN) * HD * 2; };

  // This CTA's sequence and query tile (see the header comment).
  const int h = blockIdx.x, tile = int(gridDim.y - 1 - blockIdx.y);
  const int seq = last_at_most(a.num_seqs, tile, [&](int s) { return a.cu_seqlens[s] / kBM + s; });
  const int q_begin = a.cu_seqlens[seq], q_len = a.cu_seqlens[seq + 1] - q_begin;
  const int q0 = (tile - (q_begin / kBM + seq)) * kBM;
  if (q0 >= q_len) return;
  const int rows = min(kBM, q_len - q0);
  const int first_pos = a.seq_lens[seq] - q_len + q0;  // position of the tile's row 0
  const int kv_end = first_pos + rows;                  // keys the tile's last row sees

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int kvh = h / a.group;
  const int32_t* table = a.block_tables + int64_t(seq) * a.max_blocks;
  const int64_t block_stride = int64_t(a.n_kv_heads) * HD << a.block_shift;
  const int64_t head_offset = int64_t(kvh) * HD << a.block_shift;
  const int block_mask = (1 << a.block_shift) - 1;
  const int chunk = tid % kChunks;

  // Q tile [kBM][HD]: rows past the sequence's queries are zero (never written out).
  for (int r = tid / kChunks; r < kBM; r += kRowStep) {
    const bool ok = r < rows;
    const int64_t src = ok ? int64_t(q_begin + q0 + r) * a.q_stride + int64_t(h) * HD + 8 * chunk : 0;
    cp_async16(smem + tile_offset<HD>(r, chunk), a.q + src, ok);
  }
  cp_async_commit();
  // K/V tile `n` [kBN][HD] into `stage`: keys past kv_end are zero (and their table entries unread).
  const auto load_kv = [&](int n, int stage) {
    for (int r = tid / kChunks; r < kBN; r += kRowStep) {
      const int key = n * kBN + r;
      const bool ok = key < kv_end;
      const int64_t src =
          ok ? int64_t(table[key >> a.block_shift]) * block_stride + head_offset + int64_t(key & block_mask) * HD + 8 * chunk
             : 0;
      cp_async16(smem + k_tile(stage) + tile_offset<HD>(r, chunk), a.k_cache + src, ok);
      cp_async16(smem + v_tile(stage) + tile_offset<HD>(r, chunk), a.v_cache + src, ok);
    }
  };
  const int n_tiles = (kv_end + kBN - 1) / kBN;
#pragma unroll
  for (int s = 0; s < S - 1; ++s) {
    if (s < n_tiles) load_kv(s, s);
    cp_async_commit();  // empty groups keep the wait count uniform
  }

  // Per thread: rows g and g + 8 of the warp's 16 (r = 0, 1), C-fragment columns 2t, 2t + 1.
  uint32_t qf[kQInRegs ? kSteps : 1][4];
  float o[HD / 8][4], m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
#pragma unroll
  for (int d = 0; d < HD / 8; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.f;
  const int warp_pos = first_pos + 16 * warp;  // position of the warp's first row
  // A-fragment address of k-step kk (rows lane % 16, chunk 2kk + lane / 16).
  const auto q_addr = [&](int kk) { return smem_q + tile_offset<HD>(16 * warp + lane % 16, 2 * kk + lane / 16); };

  for (int n = 0; n < n_tiles; ++n) {
    const int next = n + S - 1;
    if (next < n_tiles) load_kv(next, next % S);
    cp_async_commit();
    cp_async_wait<S - 1>();  // Q and tile n have landed
    __syncthreads();
    if constexpr (kQInRegs) {
      if (n == 0) {
#pragma unroll
        for (int kk = 0; kk < kSteps; ++kk) ldmatrix_x4(qf[kk], q_addr(kk));
      }
    }
    const int n0 = n * kBN;
    if (n0 <= warp_pos + 15) {  // else every key of the tile is past this warp's rows
      const uint32_t k_base = smem_q + k_tile(n % S), v_base = smem_q + v_tile(n % S);
      // S[16 x kBN] = Q·Kᵀ; ldmatrix of 16 keys x 16 dims gives B of two n-tiles.
      float s[kBN / 8][4];
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < kSteps; ++kk) {
        uint32_t qa[4];
        if constexpr (kQInRegs) {
#pragma unroll
          for (int i = 0; i < 4; ++i) qa[i] = qf[kk][i];
        } else {
          ldmatrix_x4(qa, q_addr(kk));
        }
#pragma unroll
        for (int p = 0; p < kBN / 16; ++p) {
          uint32_t b[4];
          ldmatrix_x4(b, k_base + tile_offset<HD>(16 * p + lane % 8 + 8 * (lane / 16), 2 * kk + (lane / 8) % 2));
          mma_bf16(s[2 * p], qa[0], qa[1], qa[2], qa[3], b[0], b[1]);
          mma_bf16(s[2 * p + 1], qa[0], qa[1], qa[2], qa[3], b[2], b[3]);
        }
      }
      // Online softmax; a row's kBN scores sit in one quad. Tile 0 shows every row key 0, so the
      // running max is finite from the first tile on.
      const bool masked = n0 + kBN - 1 > warp_pos;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int pos = warp_pos + g + 8 * r;
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < kBN / 8; ++j) {
#pragma unroll
          for (int i = 0; i < 2; ++i) {
            float& x = s[j][2 * r + i];
            x = masked && n0 + 8 * j + 2 * t + i > pos ? -INFINITY : x * a.scale_log2;
            mx = fmaxf(mx, x);
          }
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m_run[r], mx);
        const float corr = exp2f(m_run[r] - m_new);
        m_run[r] = m_new;
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < kBN / 8; ++j) {
#pragma unroll
          for (int i = 0; i < 2; ++i) {
            float& x = s[j][2 * r + i];
            x = exp2f(x - m_new);
            sum += x;
          }
        }
        l_run[r] = l_run[r] * corr + sum;
#pragma unroll
        for (int d = 0; d < HD / 8; ++d) {
          o[d][2 * r] *= corr;
          o[d][2 * r + 1] *= corr;
        }
      }
      // O[16 x HD] += P·V: the S accumulators of n-tiles 2kk, 2kk + 1 are the A fragment of
      // k-step kk; ldmatrix.trans of 16 keys x 16 dims gives B of two dim n-tiles.
#pragma unroll
      for (int kk = 0; kk < kBN / 16; ++kk) {
        const uint32_t p0 = pack_bf16(s[2 * kk][0], s[2 * kk][1]), p1 = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
        const uint32_t p2 = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]), p3 = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
        for (int p = 0; p < HD / 16; ++p) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, v_base + tile_offset<HD>(16 * kk + lane % 8 + 8 * ((lane / 8) % 2), 2 * p + lane / 16));
          mma_bf16(o[2 * p], p0, p1, p2, p3, b[0], b[1]);
          mma_bf16(o[2 * p + 1], p0, p1, p2, p3, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // the stage read here is refilled next iteration
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = l_run[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const float inv = 1.f / l;
    const int row = 16 * warp + g + 8 * r;
    if (row >= rows) continue;
    __nv_bfloat16* dst = a.out + int64_t(q_begin + q0 + row) * a.out_stride + int64_t(h) * HD + 2 * t;
#pragma unroll
    for (int d = 0; d < HD / 8; ++d) {
      *reinterpret_cast<__nv_bfloat162*>(dst + 8 * d) = __floats2bfloat162_rn(o[d][2 * r] * inv, o[d][2 * r + 1] * inv);
    }
  }
}

template <int HD>
void launch(const Args& a, int64_t tokens, cudaStream_t stream) {
  static std::atomic<uint64_t> ready{0};  // devices whose shared-memory limit is raised
  const uint64_t bit = uint64_t(1) << (current_device() & 63);
  if (!(ready.load() & bit)) {
    CUDA_CHECK(cudaFuncSetAttribute(prefill_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes<HD>));
    ready.fetch_or(bit);
  }
  const int64_t tiles = tokens / kBM + a.num_seqs;
  MXMOE_CHECK(tiles < 65536, "paged_attention: ", tokens, " query tokens are too many for the prefill grid");
  prefill_kernel<HD><<<dim3(unsigned(a.n_heads), unsigned(tiles)), kThreads, kSmemBytes<HD>, stream>>>(a);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void launch_prefill(const Args& a, int head_dim, int64_t tokens, cudaStream_t stream) {
  switch (head_dim) {
    case 64: return launch<64>(a, tokens, stream);
    case 128: return launch<128>(a, tokens, stream);
    case 256: return launch<256>(a, tokens, stream);
  }
  fail("paged_attention: head_dim ", head_dim, " is not supported by the prefill kernel");
}

}  // namespace mxmoe::attention_detail
