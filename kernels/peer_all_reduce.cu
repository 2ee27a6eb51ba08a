#include <cuda_bf16.h>

#include <algorithm>

#include "engine/cuda_check.h"
#include "engine/error.h"
#include "kernels/peer_all_reduce.h"

namespace mxmoe {

namespace {

constexpr int kThreads = 256;

// The element types, as raw bits (a union member must be trivial) with their f32 conversions.
struct F32 {
  using Bits = uint32_t;
  static __device__ float to_f32(Bits b) { return __uint_as_float(b); }
  static __device__ Bits from_f32(float f) { return __float_as_uint(f); }
};
struct Bf16 {
  using Bits = uint16_t;
  static __device__ float to_f32(Bits b) { return __bfloat162float(__ushort_as_bfloat16(b)); }
  static __device__ Bits from_f32(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }
};

// 16 bytes of elements: the unit one thread pushes and sums.
template <class E>
union Unit {
  static constexpr int kElems = 16 / sizeof(typename E::Bits);
  uint4 raw;
  typename E::Bits e[kElems];
};

// Unit u of x [n] (elements past n read as zero); x may be only element-aligned.
template <class E>
__device__ uint4 load_unit(const typename E::Bits* x, int64_t u, int64_t n, bool aligned) {
  constexpr int k = Unit<E>::kElems;
  if (aligned && (u + 1) * k <= n) return reinterpret_cast<const uint4*>(x)[u];
  Unit<E> w;
  w.raw = make_uint4(0, 0, 0, 0);
  for (int i = 0; i < k; ++i)
    if (u * k + i < n) w.e[i] = x[u * k + i];
  return w.raw;
}

template <class E>
__device__ void store_unit(typename E::Bits* x, int64_t u, int64_t n, bool aligned, const float (&v)[Unit<E>::kElems]) {
  constexpr int k = Unit<E>::kElems;
  Unit<E> w;
  for (int i = 0; i < k; ++i) w.e[i] = E::from_f32(v[i]);
  if (aligned && (u + 1) * k <= n) {
    reinterpret_cast<uint4*>(x)[u] = w.raw;
    return;
  }
  for (int i = 0; i < k; ++i)
    if (u * k + i < n) x[u * k + i] = w.e[i];
}

__device__ void store_release_sys(uint32_t* p, uint32_t v) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

__device__ uint32_t load_acquire_sys(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Block b owns units b·kThreads + t (grid-strided) of x in every pass and flag column b: the same
// partition on every rank, since it depends only on the element count.
template <class E>
__global__ void __launch_bounds__(kThreads)
    peer_all_reduce_kernel(PeerAllReduceRank r, typename E::Bits* x, int64_t n, bool aligned) {
  constexpr int k = Unit<E>::kElems;
  __shared__ int aborted;
  if (threadIdx.x == 0) aborted = 0;
  const int64_t units = (n + k - 1) / k;
  const int64_t first = int64_t(blockIdx.x) * kThreads + threadIdx.x, stride = int64_t(gridDim.x) * kThreads;
  const uint32_t epoch = r.epochs[blockIdx.x] + 1;
  const int64_t parity = int64_t(epoch & 1) * r.world * r.slot_bytes;

  // 1. Push: this rank's units into its slot on every peer.
  for (int64_t u = first; u < units; u += stride) {
    const uint4 v = load_unit<E>(x, u, n, aligned);
    for (int p = 0; p < r.world; ++p)
      if (p != r.rank) reinterpret_cast<uint4*>(r.slots[p] + parity + r.rank * r.slot_bytes)[u] = v;
  }
  __syncthreads();  // every thread's pushes before the flags

  // 2. Thread p < world raises this block's flag on peer p, then waits for p's flag here. Only these
  // threads fence at system scope: the barrier above orders the block's pushes before their release.
  if (const int p = threadIdx.x; p < r.world && p != r.rank) {
    __threadfence_system();
    store_release_sys(r.flags[p] + blockIdx.x * r.world + r.rank, epoch);
    const uint32_t* mine = r.flags[r.rank] + blockIdx.x * r.world + p;
    for (uint32_t spins = 1; int32_t(load_acquire_sys(mine) - epoch) < 0; ++spins)
      if (spins % 64 == 0 && *r.abort) {  // host memory: read it rarely
        aborted = 1;
        break;
      }
  }
  __syncthreads();
  if (aborted) return;

  // 3. Sum in rank order; the peers' units are read from L2, where their writes landed.
  for (int64_t u = first; u < units; u += stride) {
    float acc[k] = {};
    for (int q = 0; q < r.world; ++q) {
      Unit<E> w;
      w.raw = q == r.rank ? load_unit<E>(x, u, n, aligned)
                          : __ldcg(reinterpret_cast<const uint4*>(r.slots[r.rank] + parity + q * r.slot_bytes) + u);
      for (int i = 0; i < k; ++i) acc[i] += E::to_f32(w.e[i]);
    }
    store_unit<E>(x, u, n, aligned, acc);
  }
  if (threadIdx.x == 0) r.epochs[blockIdx.x] = epoch;
}

template <class E>
void launch(const PeerAllReduceRank& r, const Tensor& x, cudaStream_t stream) {
  const int64_t n = x.numel(), units = (n + Unit<E>::kElems - 1) / Unit<E>::kElems;
  const int blocks = int(std::clamp<int64_t>((units + kThreads - 1) / kThreads, 1, kPeerAllReduceMaxBlocks));
  const bool aligned = reinterpret_cast<uintptr_t>(x.data()) % 16 == 0;
  peer_all_reduce_kernel<E><<<blocks, kThreads, 0, stream>>>(r, x.data_as<typename E::Bits>(), n, aligned);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void peer_all_reduce_sum(const PeerAllReduceRank& r, const Tensor& x, cudaStream_t stream) {
  MXMOE_CHECK(r.world >= 2 && r.world <= kPeerAllReduceMaxRanks && r.rank >= 0 && r.rank < r.world,
              "peer all-reduce: rank ", r.rank, " of world ", r.world, " (2..", kPeerAllReduceMaxRanks, " ranks)");
  MXMOE_CHECK(x.device() == Device::cuda && x.is_contiguous(), "peer all-reduce: x ", shape_str(x.shape()),
              " is not a contiguous device tensor");
  MXMOE_CHECK(int64_t(x.nbytes()) <= r.slot_bytes, "peer all-reduce: x is ", x.nbytes(), " bytes, the slots hold ",
              r.slot_bytes);
  if (x.numel() == 0) return;
  switch (x.dtype()) {
    case DType::f32: return launch<F32>(r, x, stream);
    case DType::bf16: return launch<Bf16>(r, x, stream);
    default: fail("peer all-reduce: dtype ", dtype_name(x.dtype()), " is not supported (bf16 or f32)");
  }
}

}  // namespace mxmoe
