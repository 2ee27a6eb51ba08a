// Tensor-core prefill attention (FlashAttention-2 style) over the paged KV cache; same contract
// as paged_attention (kernels/attention.h), which calls it when sequences have many queries.
//
// Work split: one CTA per (tile of BM query rows of one sequence, query head); each of its 4 warps
// owns 16 · MT consecutive query rows (BM = 128, MT = 2 at head_dim <= 128; 64 and 1 at 256). K/V tiles of kBN = 64 keys stream through shared memory in a ring
// of kStages buffers filled by cp.async, rows gathered through the block table. S = Q·Kᵀ and
// O += P·V run on mma.m16n8k16 (operands by ldmatrix, V by ldmatrix.trans); the softmax is online
// in fp32 registers in the exp2 domain, P goes to the second mma as bf16. Only key tiles that
// cross a warp's causal diagonal are masked, and the CTA stops after its last row's diagonal.
// Query heads sharing a KV head are neighbours in the grid (x), so they run at the same time and
// read the same K/V tiles through L2.
//
// Tiles: sequence s's query tiles are numbered from first(s) = floor(cu_seqlens[s] / BM) + s.
// first() strictly increases and first(s) + ceil(q_len(s) / BM) <= first(s + 1), so the grid
// spans floor(T / BM) + S tiles and a CTA finds its sequence by a binary search over cu_seqlens
// on the device (no host copy of the lengths: the decoder's are device-resident). Tiles past a
// sequence's queries exit at once. Tiles run in reverse order so the long late causal tiles start
// first and short ones fill the tail.
//
// Shared memory: tiles of [rows][head_dim] bf16 with the 16-byte chunks of row r XOR-swizzled by
// r % 8, so the 8 rows an ldmatrix phase reads hit distinct banks.
#include <cuda_bf16.h>

#include <cmath>

#include "engine/cuda_check.h"
#include "engine/error.h"
#include "kernels/attention_prefill.cuh"
#include "kernels/smem_limit.h"
#include "kernels/w8a16_dot.cuh"      // mma_bf16
#include "kernels/w8a16_gemm_ptx.cuh"  // cp_async16 / commit / wait

namespace mxmoe::attention_detail {

namespace {

using w8a16::cp_async16;
using w8a16::cp_async_commit;
using w8a16::cp_async_wait;
using w8a16::mma_bf16;

constexpr int kBN = 64, kWarps = 4, kThreads = 32 * kWarps;

// Query rows per warp in 16-row mma tiles, MT: with two, every K/V fragment read from shared
// memory feeds two mmas and each K/V tile read through L2 serves 128 queries; at head_dim 256 two
// tiles' O accumulators do not fit in registers, so one there (the default at <= 128 is two).
template <int MT>
constexpr int kBM = 16 * MT * kWarps;  // query rows per CTA
template <int HD, int MT>
constexpr int smem_bytes(int stages) { return (kBM<MT> + 2 * stages * kBN) * HD * 2; }  // Q, then K and V per stage
// Three stages where two CTAs still share an SM (<= 113 KB each), else two.
template <int HD, int MT>
constexpr int kStages = smem_bytes<HD, MT>(3) <= 113 * 1024 ? 3 : 2;
template <int HD, int MT>
constexpr int kSmemBytes = smem_bytes<HD, MT>(kStages<HD, MT>);

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

// 2^x on the SFU (ex2.approx.ftz: ~2 ulp, 2^-inf = 0); exp2f adds range handling around it.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

template <int HD, int MT>
__global__ void __launch_bounds__(kThreads) prefill_kernel(Args a) {
  constexpr int BM = kBM<MT>, S = kStages<HD, MT>;
  constexpr int kChunks = HD / 8;                // 16-byte chunks per row
  constexpr int kRowStep = kThreads / kChunks;   // rows one pass of the CTA's copies covers
  constexpr int kSteps = HD / 16;                // mma k-steps over the head dimension
  constexpr bool kQInRegs = MT * HD <= 128;      // Q fragments kept in registers if they fit beside O
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t smem_q = uint32_t(__cvta_generic_to_shared(smem));
  const auto k_tile = [](int stage) { return (BM + 2 * stage * kBN) * HD * 2; };  // byte offsets
  const auto v_tile = [](int stage) { return (BM + (2 * stage + 1) * kBN) * HD * 2; };

  // This CTA's sequence and query tile (see the header comment).
  const int h = blockIdx.x, tile = int(gridDim.y - 1 - blockIdx.y);
  const int seq = last_at_most(a.num_seqs, tile, [&](int s) { return a.cu_seqlens[s] / BM + s; });
  const int q_begin = a.cu_seqlens[seq], q_len = a.cu_seqlens[seq + 1] - q_begin;
  const int q0 = (tile - (q_begin / BM + seq)) * BM;
  if (q0 >= q_len) return;
  const int rows = min(BM, q_len - q0);
  const int first_pos = a.seq_lens[seq] - q_len + q0;  // position of the tile's row 0
  const int kv_end = first_pos + rows;                  // keys the tile's last row sees

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int kvh = h / a.group;
  const int32_t* table = a.block_tables + int64_t(seq) * a.max_blocks;
  const int64_t block_stride = int64_t(a.n_kv_heads) * HD << a.block_shift;
  const int block_mask = (1 << a.block_shift) - 1;
  const int chunk = tid % kChunks;
  // This thread's 16-byte chunk of the KV head's rows in block 0; `kv_offset` moves to a key.
  const int64_t kv_first = (int64_t(kvh) * HD << a.block_shift) + 8 * chunk;
  const auto kv_offset = [&](int key) {
    return int64_t(table[key >> a.block_shift]) * block_stride + kv_first + int64_t(key & block_mask) * HD;
  };

  // Q tile [BM][HD]: rows past the sequence's queries are zero (never written out).
  for (int r = tid / kChunks; r < BM; r += kRowStep) {
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
      const int64_t src = ok ? kv_offset(key) : 0;
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

  // Per thread, for each of the warp's MT row tiles i: rows g and g + 8 (r = 0, 1), C-fragment
  // columns 2t, 2t + 1. The warp owns rows 16·MT·warp .. + 16·MT − 1.
  uint32_t qf[kQInRegs ? MT : 1][kQInRegs ? kSteps : 1][4];
  float o[MT][HD / 8][4], m_run[MT][2], l_run[MT][2];
#pragma unroll
  for (int i = 0; i < MT; ++i) {
    m_run[i][0] = m_run[i][1] = -INFINITY;
    l_run[i][0] = l_run[i][1] = 0.f;
#pragma unroll
    for (int d = 0; d < HD / 8; ++d) o[i][d][0] = o[i][d][1] = o[i][d][2] = o[i][d][3] = 0.f;
  }
  const int warp_row = 16 * MT * warp;
  const int warp_pos = first_pos + warp_row;  // position of the warp's first row
  // A-fragment address of row tile i, k-step kk (rows lane % 16, chunk 2kk + lane / 16).
  const auto q_addr = [&](int i, int kk) {
    return smem_q + tile_offset<HD>(warp_row + 16 * i + lane % 16, 2 * kk + lane / 16);
  };

  for (int n = 0; n < n_tiles; ++n) {
    const int next = n + S - 1;
    if (next < n_tiles) load_kv(next, next % S);
    cp_async_commit();
    cp_async_wait<S - 1>();  // Q and tile n have landed
    __syncthreads();
    if constexpr (kQInRegs) {
      if (n == 0) {
#pragma unroll
        for (int i = 0; i < MT; ++i) {
#pragma unroll
          for (int kk = 0; kk < kSteps; ++kk) ldmatrix_x4(qf[i][kk], q_addr(i, kk));
        }
      }
    }
    const int n0 = n * kBN;
    if (n0 <= warp_pos + 16 * MT - 1) {  // else every key of the tile is past this warp's rows
      const uint32_t k_base = smem_q + k_tile(n % S), v_base = smem_q + v_tile(n % S);
      // S[16·MT x kBN] = Q·Kᵀ; ldmatrix of 16 keys x 16 dims gives B of two n-tiles.
      float s[MT][kBN / 8][4];
#pragma unroll
      for (int i = 0; i < MT; ++i) {
#pragma unroll
        for (int j = 0; j < kBN / 8; ++j) s[i][j][0] = s[i][j][1] = s[i][j][2] = s[i][j][3] = 0.f;
      }
      // Not unrolled when Q comes from shared memory: the registers go to the accumulators.
#pragma unroll(kQInRegs ? kSteps : 1)
      for (int kk = 0; kk < kSteps; ++kk) {
        uint32_t qa[MT][4];
#pragma unroll
        for (int i = 0; i < MT; ++i) {
          if constexpr (kQInRegs) {
#pragma unroll
            for (int e = 0; e < 4; ++e) qa[i][e] = qf[i][kk][e];
          } else {
            ldmatrix_x4(qa[i], q_addr(i, kk));
          }
        }
#pragma unroll
        for (int p = 0; p < kBN / 16; ++p) {
          uint32_t b[4];
          ldmatrix_x4(b, k_base + tile_offset<HD>(16 * p + lane % 8 + 8 * (lane / 16), 2 * kk + (lane / 8) % 2));
#pragma unroll
          for (int i = 0; i < MT; ++i) {
            mma_bf16(s[i][2 * p], qa[i][0], qa[i][1], qa[i][2], qa[i][3], b[0], b[1]);
            mma_bf16(s[i][2 * p + 1], qa[i][0], qa[i][1], qa[i][2], qa[i][3], b[2], b[3]);
          }
        }
      }
      // Online softmax; a row's kBN scores sit in one quad. The running max m is kept in log2
      // units (score · scale · log2 e) and found on the raw scores (scale > 0), so each
      // probability is one FFMA and one ex2. Tile 0 shows every row key 0, so m is finite from
      // the first tile on. Only tiles crossing the warp's diagonal test positions.
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        if (n0 + kBN - 1 > warp_pos + 16 * i) {
#pragma unroll
          for (int j = 0; j < kBN / 8; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              if (n0 + 8 * j + 2 * t + e % 2 > warp_pos + 16 * i + g + 8 * (e / 2)) s[i][j][e] = -INFINITY;
            }
          }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          float mx = -INFINITY;
#pragma unroll
          for (int j = 0; j < kBN / 8; ++j) mx = fmaxf(mx, fmaxf(s[i][j][2 * r], s[i][j][2 * r + 1]));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
          const float m_new = fmaxf(m_run[i][r], mx * a.scale_log2);
          const float corr = fast_exp2(m_run[i][r] - m_new);
          m_run[i][r] = m_new;
          float sum = 0.f;
#pragma unroll
          for (int j = 0; j < kBN / 8; ++j) {
#pragma unroll
            for (int e = 2 * r; e < 2 * r + 2; ++e) {
              s[i][j][e] = fast_exp2(fmaf(s[i][j][e], a.scale_log2, -m_new));
              sum += s[i][j][e];
            }
          }
          l_run[i][r] = l_run[i][r] * corr + sum;
#pragma unroll
          for (int d = 0; d < HD / 8; ++d) {
            o[i][d][2 * r] *= corr;
            o[i][d][2 * r + 1] *= corr;
          }
        }
      }
      // O[16·MT x HD] += P·V: the S accumulators of n-tiles 2kk, 2kk + 1 are the A fragment of
      // k-step kk; ldmatrix.trans of 16 keys x 16 dims gives B of two dim n-tiles.
#pragma unroll
      for (int kk = 0; kk < kBN / 16; ++kk) {
        uint32_t pa[MT][4];
#pragma unroll
        for (int i = 0; i < MT; ++i) {
          pa[i][0] = pack_bf16(s[i][2 * kk][0], s[i][2 * kk][1]);
          pa[i][1] = pack_bf16(s[i][2 * kk][2], s[i][2 * kk][3]);
          pa[i][2] = pack_bf16(s[i][2 * kk + 1][0], s[i][2 * kk + 1][1]);
          pa[i][3] = pack_bf16(s[i][2 * kk + 1][2], s[i][2 * kk + 1][3]);
        }
#pragma unroll
        for (int p = 0; p < HD / 16; ++p) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, v_base + tile_offset<HD>(16 * kk + lane % 8 + 8 * ((lane / 8) % 2), 2 * p + lane / 16));
#pragma unroll
          for (int i = 0; i < MT; ++i) {
            mma_bf16(o[i][2 * p], pa[i][0], pa[i][1], pa[i][2], pa[i][3], b[0], b[1]);
            mma_bf16(o[i][2 * p + 1], pa[i][0], pa[i][1], pa[i][2], pa[i][3], b[2], b[3]);
          }
        }
      }
    }
    __syncthreads();  // the stage read here is refilled next iteration
  }

#pragma unroll
  for (int i = 0; i < MT; ++i) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float l = l_run[i][r];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const float inv = 1.f / l;
      const int row = warp_row + 16 * i + g + 8 * r;
      if (row >= rows) continue;
      __nv_bfloat16* dst = a.out + int64_t(q_begin + q0 + row) * a.out_stride + int64_t(h) * HD + 2 * t;
#pragma unroll
      for (int d = 0; d < HD / 8; ++d) {
        *reinterpret_cast<__nv_bfloat162*>(dst + 8 * d) =
            __floats2bfloat162_rn(o[i][d][2 * r] * inv, o[i][d][2 * r + 1] * inv);
      }
    }
  }
}

template <int HD, int MT>
void launch(const Args& a, int64_t tokens, cudaStream_t stream) {
  constexpr int smem = kSmemBytes<HD, MT>;
  allow_dynamic_smem<prefill_kernel<HD, MT>>(smem);
  const int64_t tiles = tokens / kBM<MT> + a.num_seqs;
  MXMOE_CHECK(tiles < 65536, "paged_attention: ", tokens, " query tokens are too many for the prefill grid");
  prefill_kernel<HD, MT><<<dim3(unsigned(a.n_heads), unsigned(tiles)), kThreads, smem, stream>>>(a);
  CUDA_CHECK_LAUNCH();
}

template <int HD>
void launch_rows(const Args& a, int64_t tokens, int rows, cudaStream_t stream) {
  if (rows == 64 || (rows == 0 && HD > 128)) return launch<HD, 1>(a, tokens, stream);
  if constexpr (HD <= 128) {
    if (rows == 128 || rows == 0) return launch<HD, 2>(a, tokens, stream);
  }
  fail("paged_attention: ", rows, " query rows per prefill tile are not supported at head_dim ", HD, " (64",
       HD <= 128 ? " or 128)" : ")");
}

}  // namespace

void launch_prefill(const Args& a, int head_dim, int64_t tokens, int rows, cudaStream_t stream) {
  switch (head_dim) {
    case 64: return launch_rows<64>(a, tokens, rows, stream);
    case 128: return launch_rows<128>(a, tokens, rows, stream);
    case 256: return launch_rows<256>(a, tokens, rows, stream);
  }
  fail("paged_attention: head_dim ", head_dim, " is not supported by the prefill kernel");
}

}  // namespace mxmoe::attention_detail
