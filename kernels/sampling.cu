// Sampling kernel: a cluster of kCtas CTAs per row, each holding a contiguous slice of the row in
// shared memory (in the workspace when the slice is too large). The top-k and top-p thresholds
// come from a select over integer histograms: first buckets by distance below the row's max
// (radix digits of the float bits would pile nearly every logit onto two or three bins and
// serialize the atomics), then 4 radix passes of 8 bits over the order-preserving keys inside the
// chosen bucket. Every CTA histograms its slice in its own shared memory and reads the others'
// through distributed shared memory: no global atomics, no float atomics, no sort, so the result
// is bit-reproducible and the same as one CTA walking the whole row.
#include <cooperative_groups.h>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <cuda_bf16.h>

#include <type_traits>

#include "engine/cuda_check.h"
#include "kernels/sampling.h"
#include "kernels/smem_limit.h"

namespace mxmoe {

using namespace sampling_detail;
namespace cg = cooperative_groups;

namespace {

constexpr int kCtas = 8;  // CTAs per row: one portable cluster
constexpr int kThreads = 512;
constexpr int kBins = 256;
constexpr float kBucketsPerLogit = 8.f;  // first-level buckets: 1/8 logit wide, 32 logits deep
constexpr int64_t kMaxSharedSlice = 50 * 1024;  // floats (200 KiB); larger slices live in the workspace

using u64 = unsigned long long;

struct ArgMax {
  float value;
  int32_t index;
};

struct ArgMaxOp {
  __device__ ArgMax operator()(const ArgMax& a, const ArgMax& b) const {
    if (b.value > a.value || (b.value == a.value && b.index < a.index)) return b;
    return a;
  }
};

struct Shared {
  union {
    cub::BlockReduce<ArgMax, kThreads>::TempStorage argmax;
    cub::BlockScan<u64, kThreads>::TempStorage scan;
  } cub;
  u64 hist[2][kBins];  // this CTA's histogram; double-buffered so one cluster barrier per pass suffices
  u64 total[kBins];    // the cluster's histogram of the current pass
  ArgMax best;         // this CTA's argmax
  u64 mass;            // this CTA's kept mass
  uint32_t digit;      // find_digit's result: the chosen bin
  u64 need;            // and the weight still to reach inside it
};

// This CTA's part of the row: ids [begin, begin + count), logits penalized and / temperature.
struct Slice {
  float* w;  // [count]
  int64_t begin, count;
};

// First-level bucket as a digit that grows with the key: 255 for the max, 0 from 32 logits below
// it on (and for -inf). Monotone in x, so a bucket is a contiguous key range.
__device__ uint32_t bucket_digit(float x, float m) {
  const float d = (m - x) * kBucketsPerLogit;  // >= 0
  return d < float(kBins - 1) ? uint32_t(kBins - 1) - uint32_t(d) : 0u;
}

// One histogram pass of the cluster: contrib(x, key, bin) returns the weight of an element and
// sets its bin. Leaves the cluster's sums in sh.total.
template <class Contrib>
__device__ void cluster_histogram(const Slice& s, Contrib contrib, Shared& sh, int& buf, cg::cluster_group& cluster) {
  u64* h = sh.hist[buf];
  buf ^= 1;
  for (int b = threadIdx.x; b < kBins; b += kThreads) h[b] = 0;
  __syncthreads();
  for (int64_t i = threadIdx.x; i < s.count; i += kThreads) {
    const float x = s.w[i];
    uint32_t bin = 0;
    const u64 wt = contrib(x, order_key(x), bin);
    if (wt) atomicAdd(&h[bin], wt);
  }
  cluster.sync();
  for (int b = threadIdx.x; b < kBins; b += kThreads) {
    u64 t = 0;
    for (unsigned r = 0; r < kCtas; ++r) t += cluster.map_shared_rank(h, r)[b];
    sh.total[b] = t;
  }
  __syncthreads();
}

// The largest bin d whose suffix sum total[d..255] reaches need_of(sum of all bins) (0 if none,
// as a scan from 255 down would choose) -> sh.digit, and the weight still to reach inside it ->
// sh.need. One warp: 8 bins per lane, a prefix sum over lanes, then one lane walks its bins.
template <class Need>
__device__ void find_digit(Need need_of, Shared& sh) {
  if (threadIdx.x < 32) {
    const int lane = int(threadIdx.x);
    u64 mine = 0;
    for (int j = 0; j < 8; ++j) mine += sh.total[kBins - 1 - 8 * lane - j];
    u64 incl = mine;
    for (int o = 1; o < 32; o <<= 1) {
      const u64 v = __shfl_up_sync(~0u, incl, o);
      if (lane >= o) incl += v;
    }
    const u64 need = need_of(u64(__shfl_sync(~0u, incl, 31)));
    const uint32_t reach = __ballot_sync(~0u, incl >= need);
    if (reach == 0) {
      if (lane == 31) {
        sh.digit = 0;
        sh.need = need - (incl - sh.total[0]);
      }
    } else if (lane == __ffs(int(reach)) - 1) {
      u64 acc = incl - mine;
      int d = kBins - 1 - 8 * lane;
      for (int j = 0; j < 7 && acc + sh.total[d] < need; ++j, --d) acc += sh.total[d];
      sh.digit = uint32_t(d);
      sh.need = need - acc;
    }
  }
  __syncthreads();
}

// The key tau with weight(key > tau) < target <= weight(key >= tau), target = target_of(total
// weight): the bucket holding tau, then its bytes from the top.
template <class Weight, class Target>
__device__ uint32_t cluster_select(const Slice& s, float m, Weight weight, Target target_of, Shared& sh, int& buf,
                                   cg::cluster_group& cluster) {
  cluster_histogram(s, [&](float x, uint32_t key, uint32_t& bin) -> u64 {
    bin = bucket_digit(x, m);
    return weight(x, key);
  }, sh, buf, cluster);
  find_digit(target_of, sh);
  const uint32_t bucket = sh.digit;
  u64 need = sh.need;
  uint32_t prefix = 0, mask = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    cluster_histogram(s, [&](float x, uint32_t key, uint32_t& bin) -> u64 {
      if ((key & mask) != prefix || bucket_digit(x, m) != bucket) return 0;
      bin = (key >> shift) & 255u;
      return weight(x, key);
    }, sh, buf, cluster);
    find_digit([need](u64) { return need; }, sh);
    prefix |= sh.digit << shift;
    mask |= 255u << shift;
    need = sh.need;
  }
  return prefix;
}

template <class T>
__device__ float logit_at(const T* row, int64_t i) {
  if constexpr (std::is_same_v<T, float>) return row[i];
  else return __bfloat162float(row[i]);
}

template <class T>
__global__ void __cluster_dims__(kCtas, 1, 1) __launch_bounds__(kThreads, 2)
sample_kernel(const T* logits, int64_t n, const SamplingParams* params, const int32_t* prev_offsets,
              const int32_t* prev_ids, float* workspace, bool in_shared, int32_t* tokens) {
  extern __shared__ float shared_slice[];
  __shared__ Shared sh;
  cg::cluster_group cluster = cg::this_cluster();
  const unsigned rank = cluster.block_rank();
  const int64_t row = blockIdx.x / kCtas;
  const SamplingParams p = params[row];
  const T* in = logits + row * n;
  const int64_t per_cta = (n + kCtas - 1) / kCtas;
  Slice s;
  s.begin = min(n, int64_t(rank) * per_cta);
  s.count = min(n, s.begin + per_cta) - s.begin;
  s.w = in_shared ? shared_slice : workspace + row * n + s.begin;

  // Penalized logits (/ temperature unless greedy), as the reference: duplicates write the same value.
  // kLoads loads in flight per thread: one at a time, a 152k-token row took ~38 dependent L2 round
  // trips per thread.
  const auto scaled = [&](float x) { return p.temperature == 0.f ? x : x / p.temperature; };
  constexpr int kLoads = 8;
  for (int64_t i0 = threadIdx.x; i0 < s.count; i0 += kLoads * kThreads) {
    float v[kLoads];
#pragma unroll
    for (int u = 0; u < kLoads; ++u) {
      const int64_t i = i0 + int64_t(u) * kThreads;
      v[u] = i < s.count ? logit_at(in, s.begin + i) : 0.f;
    }
#pragma unroll
    for (int u = 0; u < kLoads; ++u) {
      const int64_t i = i0 + int64_t(u) * kThreads;
      if (i < s.count) s.w[i] = scaled(v[u]);
    }
  }
  __syncthreads();
  if (p.repetition_penalty != 1.f) {
    for (int j = prev_offsets[row] + int(threadIdx.x); j < prev_offsets[row + 1]; j += kThreads) {
      const int64_t id = prev_ids[j];
      if (id >= s.begin && id < s.begin + s.count) s.w[id - s.begin] = scaled(penalized(logit_at(in, id), p.repetition_penalty));
    }
    __syncthreads();
  }

  // Argmax (ties -> lowest id): the greedy token, and the max m of the sampled path.
  ArgMax local{-INFINITY, INT32_MAX};
  for (int64_t i = threadIdx.x; i < s.count; i += kThreads) local = ArgMaxOp{}(local, ArgMax{s.w[i], int32_t(s.begin + i)});
  const ArgMax cta_best = cub::BlockReduce<ArgMax, kThreads>(sh.cub.argmax).Reduce(local, ArgMaxOp{});
  if (threadIdx.x == 0) sh.best = cta_best;
  cluster.sync();
  ArgMax best{-INFINITY, INT32_MAX};
  for (unsigned r = 0; r < kCtas; ++r) best = ArgMaxOp{}(best, *cluster.map_shared_rank(&sh.best, r));
  const int32_t argmax = best.index < n ? best.index : 0;
  if (p.temperature == 0.f) {
    if (rank == 0 && threadIdx.x == 0) tokens[row] = argmax;
    cluster.sync();  // keep this CTA's shared memory alive until the others have read it
    return;
  }
  const float m = best.value;

  int buf = 0;
  uint32_t top_k_key = 0, top_p_key = 0;
  if (p.top_k > 0 && p.top_k < n) {
    top_k_key = cluster_select(s, m, [](float, uint32_t) -> u64 { return 1; },
                               [&](u64) { return u64(p.top_k); }, sh, buf, cluster);
  }
  if (p.top_p < 1.f) {
    top_p_key = cluster_select(s, m,
        [&](float x, uint32_t key) -> u64 { return key >= top_k_key ? fixed_mass(expf(x - m)) : 0; },
        [&](u64 total) { return max(u64(1), u64(double(p.top_p) * double(total))); }, sh, buf, cluster);
  }

  // Draw: contiguous chunks per thread, CTAs in rank order, so kept masses accumulate in id order;
  // the one thread whose range holds the point r walks its chunk.
  const auto kept_mass = [&](int64_t i) -> u64 {
    const float x = s.w[i];
    const uint32_t key = order_key(x);
    const float e = expf(x - m);
    return (key >= top_k_key && key >= top_p_key && e >= p.min_p) ? fixed_mass(e) : 0;
  };
  const int64_t chunk = (s.count + kThreads - 1) / kThreads;
  const int64_t lo = min(s.count, threadIdx.x * chunk), hi = min(s.count, lo + chunk);
  u64 mine = 0;
  for (int64_t i = lo; i < hi; ++i) mine += kept_mass(i);
  u64 before = 0, cta_total = 0;
  cub::BlockScan<u64, kThreads>(sh.cub.scan).ExclusiveSum(mine, before, cta_total);
  if (threadIdx.x == 0) sh.mass = cta_total;
  cluster.sync();
  u64 total = 0;
  for (unsigned r = 0; r < kCtas; ++r) {
    const u64 t = *cluster.map_shared_rank(&sh.mass, r);
    before += r < rank ? t : 0;
    total += t;
  }
  if (total == 0) {  // cannot happen with valid parameters and finite logits (the top token is kept)
    if (rank == 0 && threadIdx.x == 0) tokens[row] = argmax;
  } else {
    const u64 r = mul_hi64(total, sampling_random(p.seed, p.step));
    if (r >= before && r < before + mine) {
      u64 cum = before;
      for (int64_t i = lo; i < hi; ++i) {
        cum += kept_mass(i);
        if (cum > r) {
          tokens[row] = int32_t(s.begin + i);
          break;
        }
      }
    }
  }
  cluster.sync();  // keep this CTA's shared memory alive until the others have read it
}

template <class T>
void launch(const Tensor& logits, const SamplingParams* p, const Tensor& prev_offsets, const Tensor& prev_ids,
            const Tensor& workspace, const Tensor& tokens, cudaStream_t stream) {
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  const int64_t per_cta = (vocab + kCtas - 1) / kCtas;
  const bool in_shared = per_cta <= kMaxSharedSlice;
  const size_t smem = in_shared ? size_t(per_cta) * sizeof(float) : 0;
  allow_dynamic_smem<sample_kernel<T>>(int(kMaxSharedSlice * sizeof(float)));  // the largest slice
  sample_kernel<T><<<unsigned(rows * kCtas), kThreads, smem, stream>>>(logits.data_as<const T>(), vocab, p,
      prev_offsets.data_as<const int32_t>(), prev_ids.data_as<const int32_t>(), workspace.data_as<float>(), in_shared,
      tokens.data_as<int32_t>());
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void sample(const Tensor& logits, const Tensor& params, const Tensor& prev_offsets, const Tensor& prev_ids,
            const Tensor& workspace, const Tensor& tokens, cudaStream_t stream) {
  MXMOE_CHECK(logits.dim() == 2 && logits.is_contiguous() && (logits.dtype() == DType::f32 || logits.dtype() == DType::bf16),
              "sample: logits must be contiguous f32 or bf16 [B, V], got ", dtype_name(logits.dtype()), " ",
              shape_str(logits.shape()));
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  MXMOE_CHECK(vocab > 0 && vocab < INT32_MAX, "sample: vocabulary size ", vocab, " out of range");
  MXMOE_CHECK(rows < INT32_MAX / kCtas, "sample: ", rows, " rows are too many for one launch");
  MXMOE_CHECK(params.nbytes() == size_t(rows) * sizeof(SamplingParams), "sample: params hold ", params.nbytes(),
              " bytes, expected ", rows, " x ", sizeof(SamplingParams));
  MXMOE_CHECK(prev_offsets.dtype() == DType::i32 && prev_offsets.numel() == rows + 1 && prev_ids.dtype() == DType::i32,
              "sample: prev_offsets must be i32 [B + 1] and prev_ids i32");
  MXMOE_CHECK(workspace.dtype() == DType::f32 && workspace.numel() >= rows * vocab, "sample: workspace must be f32 with at least ",
              rows * vocab, " elements");
  MXMOE_CHECK(tokens.dtype() == DType::i32 && tokens.numel() == rows, "sample: tokens must be i32 [", rows, "]");
  for (const Tensor* t : {&logits, &params, &prev_offsets, &prev_ids, &workspace, &tokens}) {
    MXMOE_CHECK(t->device() == Device::cuda, "sample: all tensors must be on the GPU");
  }
  if (rows == 0) return;
  const auto* p = static_cast<const SamplingParams*>(params.data());
  if (logits.dtype() == DType::f32) launch<float>(logits, p, prev_offsets, prev_ids, workspace, tokens, stream);
  else launch<__nv_bfloat16>(logits, p, prev_offsets, prev_ids, workspace, tokens, stream);
}

}  // namespace mxmoe
