// Sampling kernel: one CTA per row. Thresholds for top-k and top-p come from a radix select over
// order-preserving float keys (4 passes of 8-bit digits, integer histograms in shared memory), so
// no sort and no float atomics: the result is bit-reproducible.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <cuda_bf16.h>

#include <type_traits>

#include "engine/cuda_check.h"
#include "kernels/sampling.h"

namespace mxmoe {

using namespace sampling_detail;

namespace {

constexpr int kThreads = 1024;

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

struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

struct Shared {
  union {
    cub::BlockReduce<ArgMax, kThreads>::TempStorage argmax;
    cub::BlockReduce<float, kThreads>::TempStorage max;
    cub::BlockReduce<uint64_t, kThreads>::TempStorage sum;
    cub::BlockScan<uint64_t, kThreads>::TempStorage scan;
  } cub;
  unsigned long long hist[256];
  uint32_t digit;
  unsigned long long above;
  float broadcast;
  int32_t token;
};

// The key tau with weight(key > tau) < target <= weight(key >= tau), weights from weight(x, key).
template <class Weight>
__device__ uint32_t select_key(const float* w, int64_t n, uint64_t target, Weight weight, Shared& sh) {
  uint32_t prefix = 0, mask = 0;
  uint64_t above = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += kThreads) sh.hist[b] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < n; i += kThreads) {
      const float x = w[i];
      const uint32_t key = order_key(x);
      if ((key & mask) != prefix) continue;
      const uint64_t wt = weight(x, key);
      if (wt) atomicAdd(&sh.hist[(key >> shift) & 255u], (unsigned long long)wt);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int d = 255;
      for (; d > 0; --d) {
        if (above + sh.hist[d] >= target) break;
        above += sh.hist[d];
      }
      sh.digit = uint32_t(d);
      sh.above = above;
    }
    __syncthreads();
    prefix |= sh.digit << shift;
    mask |= 255u << shift;
    above = sh.above;
    __syncthreads();  // hist is reset next round
  }
  return prefix;
}

__device__ uint64_t block_sum(uint64_t v, Shared& sh) {
  const uint64_t total = cub::BlockReduce<uint64_t, kThreads>(sh.cub.sum).Sum(v);
  __syncthreads();
  if (threadIdx.x == 0) sh.above = total;
  __syncthreads();
  const uint64_t r = sh.above;
  __syncthreads();
  return r;
}

__device__ int32_t block_argmax(const float* w, int64_t n, Shared& sh) {
  ArgMax best{-INFINITY, int32_t(n)};
  for (int64_t i = threadIdx.x; i < n; i += kThreads) best = ArgMaxOp{}(best, ArgMax{w[i], int32_t(i)});
  const ArgMax r = cub::BlockReduce<ArgMax, kThreads>(sh.cub.argmax).Reduce(best, ArgMaxOp{});
  if (threadIdx.x == 0) sh.token = r.index < n ? r.index : 0;
  __syncthreads();
  return sh.token;
}

template <class T>
__device__ float logit_at(const T* row, int64_t i) {
  if constexpr (std::is_same_v<T, float>) return row[i];
  else return __bfloat162float(row[i]);
}

template <class T>
__global__ void __launch_bounds__(kThreads)
sample_kernel(const T* logits, int64_t n, const SamplingParams* params, const int32_t* prev_offsets,
              const int32_t* prev_ids, float* workspace, int32_t* tokens) {
  __shared__ Shared sh;
  const int64_t row = blockIdx.x;
  const SamplingParams p = params[row];
  const T* in = logits + row * n;
  float* w = workspace + row * n;

  for (int64_t i = threadIdx.x; i < n; i += kThreads) w[i] = logit_at(in, i);
  __syncthreads();
  if (p.repetition_penalty != 1.f) {  // duplicates write the same value: no race
    for (int j = prev_offsets[row] + threadIdx.x; j < prev_offsets[row + 1]; j += kThreads) {
      const int32_t id = prev_ids[j];
      if (id >= 0 && id < n) w[id] = penalized(logit_at(in, id), p.repetition_penalty);
    }
    __syncthreads();
  }
  if (p.temperature == 0.f) {
    const int32_t token = block_argmax(w, n, sh);
    if (threadIdx.x == 0) tokens[row] = token;
    return;
  }

  float local_max = -INFINITY;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) {
    w[i] = w[i] / p.temperature;
    local_max = fmaxf(local_max, w[i]);
  }
  const float block_max = cub::BlockReduce<float, kThreads>(sh.cub.max).Reduce(local_max, MaxOp{});
  if (threadIdx.x == 0) sh.broadcast = block_max;
  __syncthreads();
  const float m = sh.broadcast;
  __syncthreads();

  uint32_t top_k_key = 0, top_p_key = 0;
  if (p.top_k > 0 && p.top_k < n) {
    top_k_key = select_key(w, n, uint64_t(p.top_k), [](float, uint32_t) -> uint64_t { return 1; }, sh);
  }
  if (p.top_p < 1.f) {
    const auto mass = [&](float x, uint32_t key) -> uint64_t { return key >= top_k_key ? fixed_mass(expf(x - m)) : 0; };
    uint64_t local = 0;
    for (int64_t i = threadIdx.x; i < n; i += kThreads) local += mass(w[i], order_key(w[i]));
    const uint64_t total = block_sum(local, sh);
    const uint64_t target = max(uint64_t(1), uint64_t(double(p.top_p) * double(total)));
    top_p_key = select_key(w, n, target, mass, sh);
  }

  // Draw: contiguous chunks per thread, an exclusive scan of their kept masses, and the one
  // thread whose range holds the point r walks its chunk.
  const auto kept_mass = [&](int64_t i) -> uint64_t {
    const float x = w[i];
    const uint32_t key = order_key(x);
    const float e = expf(x - m);
    return (key >= top_k_key && key >= top_p_key && e >= p.min_p) ? fixed_mass(e) : 0;
  };
  const int64_t chunk = (n + kThreads - 1) / kThreads;
  const int64_t lo = min(n, threadIdx.x * chunk), hi = min(n, lo + chunk);
  uint64_t mine = 0;
  for (int64_t i = lo; i < hi; ++i) mine += kept_mass(i);
  uint64_t before = 0, total = 0;
  cub::BlockScan<uint64_t, kThreads>(sh.cub.scan).ExclusiveSum(mine, before, total);
  if (threadIdx.x == 0) sh.token = -1;
  __syncthreads();
  if (total == 0) {  // cannot happen with valid parameters (the top token is always kept)
    const int32_t token = block_argmax(w, n, sh);
    if (threadIdx.x == 0) tokens[row] = token;
    return;
  }
  const uint64_t r = mul_hi64(total, sampling_random(p.seed, p.step));
  if (r >= before && r < before + mine) {
    uint64_t cum = before;
    for (int64_t i = lo; i < hi; ++i) {
      cum += kept_mass(i);
      if (cum > r) {
        sh.token = int32_t(i);
        break;
      }
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) tokens[row] = sh.token;
}

}  // namespace

void sample(const Tensor& logits, const Tensor& params, const Tensor& prev_offsets, const Tensor& prev_ids,
            const Tensor& workspace, const Tensor& tokens, cudaStream_t stream) {
  MXMOE_CHECK(logits.dim() == 2 && logits.is_contiguous() && (logits.dtype() == DType::f32 || logits.dtype() == DType::bf16),
              "sample: logits must be contiguous f32 or bf16 [B, V], got ", dtype_name(logits.dtype()), " ",
              shape_str(logits.shape()));
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  MXMOE_CHECK(vocab > 0 && vocab < INT32_MAX, "sample: vocabulary size ", vocab, " out of range");
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
  if (logits.dtype() == DType::f32) {
    sample_kernel<float><<<unsigned(rows), kThreads, 0, stream>>>(logits.data_as<const float>(), vocab, p,
        prev_offsets.data_as<const int32_t>(), prev_ids.data_as<const int32_t>(), workspace.data_as<float>(),
        tokens.data_as<int32_t>());
  } else {
    sample_kernel<__nv_bfloat16><<<unsigned(rows), kThreads, 0, stream>>>(logits.data_as<const __nv_bfloat16>(), vocab, p,
        prev_offsets.data_as<const int32_t>(), prev_ids.data_as<const int32_t>(), workspace.data_as<float>(),
        tokens.data_as<int32_t>());
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace mxmoe
