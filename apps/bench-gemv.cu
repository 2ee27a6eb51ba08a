// Decode W8A16 benchmark (issues 4 and 5, decode paths), all ratios from this one run:
//  dense w8a16_gemv, M = 1..16, real K -> N shapes: GB/s on weight + scale bytes against the device
//    copy bandwidth (target >= 85%) and time against cuBLASLt bf16 on the same shape (target >= 1.7x),
//    with cuBLASLt's FP8 per-tensor GEMM (e4m3 x and W, the same weight bytes less the scales) as the
//    ceiling of an fp8-weight GEMM on this GPU;
//  MoE decode (gate/up + down, T = 1 and 8, random routing): GB/s on the bytes of the experts
//    actually read (target >= 80% of copy).
// Weights are rotated over > 256 MB so that no call reads from L2 (50 MB); each time is the median of
// 20 replays of a CUDA graph holding >= 16 calls (after 3 warm-up replays), per call.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "apps/bench_util.h"
#include "kernels/cublaslt_gemm.h"
#include "kernels/moe_decode.h"
#include "kernels/moe_permute.h"
#include "kernels/w8a16_gemv.h"

using namespace mxmoe;

namespace {

constexpr size_t kRotateBytes = size_t(256) << 20;

enum class Fill { e4m3, e8m0, bf16 };

__device__ uint32_t hash32(uint64_t i, uint32_t seed) {
  uint32_t x = uint32_t(i) * 0x9E3779B9u + uint32_t(i >> 32) * 0x7feb352du + seed;
  x ^= x >> 16;
  x *= 0x85ebca6bu;
  x ^= x >> 13;
  x *= 0xc2b2ae35u;
  return x ^ (x >> 16);
}

// Random (never zero) contents: e4m3 codes without NaN, scale bytes 2^-9..2^-2, bf16 in ±0.05.
__global__ void fill_kernel(void* data, size_t n, Fill kind, uint32_t seed) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const uint32_t h = hash32(i, seed);
    if (kind == Fill::e4m3) {
      const uint8_t b = uint8_t(h);
      static_cast<uint8_t*>(data)[i] = (b & 0x7f) == 0x7f ? uint8_t(b & 0xfe) : b;
    } else if (kind == Fill::e8m0) {
      static_cast<uint8_t*>(data)[i] = uint8_t(118 + h % 8);
    } else {
      static_cast<__nv_bfloat16*>(data)[i] = __float2bfloat16((float(h) * 2.3283064e-10f - 0.5f) * 0.1f);
    }
  }
}

uint32_t g_seed = 1;
void fill(const Tensor& t, Fill kind) {
  fill_kernel<<<1024, 256>>>(t.data(), size_t(t.numel()), kind, g_seed++);
  CUDA_CHECK_LAUNCH();
}
MxTensor random_mx(const Shape& shape) {
  MxTensor q = mxfp8_empty(shape, Device::cuda);
  fill(q.elems, Fill::e4m3);
  fill(q.scales, Fill::e8m0);
  return q;
}
Tensor random_bf16(const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::bf16, Device::cuda);
  fill(t, Fill::bf16);
  return t;
}

// Microseconds per call from CUDA-graph replays.
template <class Fn>
double graph_us(cudaStream_t stream, int calls, Fn&& fn) {
  return 1e3 * bench::graph_ms_per_call(stream, calls, std::forward<Fn>(fn));
}

int copies_for(size_t bytes) { return int(std::max<size_t>(1, (kRotateBytes + bytes - 1) / bytes)); }
int calls_for(int copies) { return copies * std::max(1, (16 + copies - 1) / copies); }

struct Dense {
  const char* name;
  int64_t k, n;
};

// Split-K values the sweep tries (the automatic choice is measured as well).
constexpr int kSweepSplits[] = {1, 2, 3, 4, 6, 8, 12, 16};

// The fastest forced split of `time(tuning)` (microseconds) with PDL on; splits that cannot launch
// for this shape (a cluster that does not fit) are skipped. `sweep`, if given, gets every "splits:us".
template <class Time>
std::pair<int, double> best_split(Time&& time, std::string* sweep = nullptr) {
  std::pair<int, double> best{0, 1e30};
  for (int s : kSweepSplits) {
    DecodeTuning t;
    t.splits = s;
    try {
      const double us = time(t);
      if (us < best.second) best = {s, us};
      if (sweep) *sweep += cat(" ", s, ":", int(us * 10) / 10.0);
    } catch (const Error&) {
    }
  }
  return best;
}

std::vector<std::string> g_moe_sweeps;  // printed after the MoE table

void bench_dense(const Dense& s, double copy_gbs, cudaStream_t stream) {
  const double bytes = double(s.n) * double(s.k) * (1.0 + 1.0 / kMxBlock);
  const int copies = copies_for(size_t(bytes)), bf16_copies = copies_for(size_t(s.n * s.k * 2));
  std::vector<MxTensor> ws;
  for (int i = 0; i < copies; ++i) ws.push_back(random_mx({s.n, s.k}));
  std::vector<Tensor> wb;
  for (int i = 0; i < bf16_copies; ++i) wb.push_back(random_bf16({s.n, s.k}));
  const Tensor one = bench::device_scalar(1.f);  // the fp8 GEMM's per-tensor scales
  for (int64_t m : {1, 2, 4, 8, 16}) {
    const Tensor x = random_bf16({m, s.k});
    const Tensor y = Tensor::empty({m, s.n}, DType::bf16, Device::cuda);
    const auto time = [&](const DecodeTuning& t) {
      return graph_us(stream, calls_for(copies), [&](int i) { w8a16_gemv(x, ws[size_t(i % copies)], nullptr, y, stream, t); });
    };
    const double us = time({});
    const double plain_us = time({0, false});
    const auto [split, split_us] = best_split(time);
    const double lt_us = graph_us(stream, calls_for(bf16_copies),
                                  [&](int i) { cublaslt_gemm_bf16(x, wb[size_t(i % bf16_copies)], nullptr, y, stream); });
    const double gbs = bytes / us / 1e3;
    const Tensor x8 = Tensor::empty({m, s.k}, DType::e4m3, Device::cuda);
    fill(x8, Fill::e4m3);
    const double fp8_us = bench::unless_refused("cuBLASLt fp8", [&] {
      return graph_us(stream, calls_for(copies),
                      [&](int i) { cublaslt_gemm_fp8(x8, one, ws[size_t(i % copies)].elems, one, y, stream); });
    });
    std::printf("| %-28s | %2lld | %8.2f | %6.0f | %5.1f%% | %8.2f | %5.1f%% | %2d: %7.2f | %8.2f | %5.2fx | %8s "
                "| %6s |\n",
                s.name, (long long)m, us, gbs, 100 * gbs / copy_gbs, plain_us, 100 * bytes / plain_us / 1e3 / copy_gbs,
                split, split_us, lt_us, lt_us / us, bench::or_dash(fp8_us, "%.2f").c_str(),
                bench::or_dash(fp8_us / us, "%.2fx").c_str());
  }
}

struct Moe {
  const char* name;
  int64_t experts, hidden, inter;
  int top_k;
};

void bench_moe(const Moe& s, double copy_gbs, cudaStream_t stream) {
  const MxTensor w13 = random_mx({s.experts, 2 * s.inter, s.hidden});
  const MxTensor w2 = random_mx({s.experts, s.hidden, s.inter});
  const double expert_bytes = 3.0 * double(s.inter) * double(s.hidden) * (1.0 + 1.0 / kMxBlock);
  constexpr int kRoutings = 16;  // cycled, so consecutive calls read different experts
  std::mt19937_64 rng(7);
  for (int64_t tokens : {1, 8}) {
    const int64_t pairs = tokens * s.top_k;
    std::vector<MoePermuteBuffers> perms;
    double active = 0;
    for (int r = 0; r < kRoutings; ++r) {
      std::vector<int> ids, all(static_cast<size_t>(s.experts));
      std::set<int> used;
      for (int64_t t = 0; t < tokens; ++t) {
        std::iota(all.begin(), all.end(), 0);
        std::shuffle(all.begin(), all.end(), rng);
        ids.insert(ids.end(), all.begin(), all.begin() + s.top_k);
        used.insert(all.begin(), all.begin() + s.top_k);
      }
      active += double(used.size()) / kRoutings;
      Tensor ids_cpu = Tensor::empty({pairs}, DType::i32, Device::cpu);
      std::copy(ids.begin(), ids.end(), ids_cpu.data_as<int>());
      perms.push_back(moe_permute_buffers(pairs, s.experts));
      moe_permute(ids_cpu.to(Device::cuda), perms.back(), stream);
    }
    const Tensor x = random_bf16({tokens, s.hidden});
    const Tensor act = Tensor::empty({pairs, s.inter}, DType::bf16, Device::cuda);
    const Tensor y = Tensor::empty({pairs, s.hidden}, DType::f32, Device::cuda);
    const auto& perm = [&](int i) -> const MoePermutation& { return perms[size_t(i % kRoutings)].perm; };
    const auto up_time = [&](const DecodeTuning& t) {
      return graph_us(stream, 2 * kRoutings, [&](int i) { moe_gate_up_decode(x, w13, perm(i), s.top_k, act, stream, t); });
    };
    const auto down_time = [&](const DecodeTuning& t) {
      return graph_us(stream, 2 * kRoutings, [&](int i) { moe_down_decode(act, w2, perm(i), y, stream, t); });
    };
    const auto both_time = [&](const DecodeTuning& up, const DecodeTuning& down) {
      return graph_us(stream, 2 * kRoutings, [&](int i) {
        moe_gate_up_decode(x, w13, perm(i), s.top_k, act, stream, up);
        moe_down_decode(act, w2, perm(i), y, stream, down);
      });
    };
    const double up_us = up_time({}), down_us = down_time({}), us = both_time({}, {});
    const double plain_us = both_time({0, false}, {0, false});
    std::string up_sweep, down_sweep;
    const auto [up_split, up_split_us] = best_split(up_time, &up_sweep);
    const auto [down_split, down_split_us] = best_split(down_time, &down_sweep);
    g_moe_sweeps.push_back(cat(s.name, " T=", tokens, " gate_up", up_sweep, " | down", down_sweep));
    const double swept_us = both_time({up_split, true}, {down_split, true});
    const double gbs = active * expert_bytes / us / 1e3;
    const auto pct = [&](double t_us) { return 100 * active * expert_bytes / t_us / 1e3 / copy_gbs; };
    std::printf("| %-30s | %2lld | %6.1f | %8.2f | %8.2f | %8.2f | %6.0f | %5.1f%% | %8.2f (%5.1f%%) | %2d: %7.2f | %2d: %7.2f "
                "| %8.2f (%5.1f%%) |\n",
                s.name, (long long)tokens, active, up_us, down_us, us, gbs, pct(us), plain_us, pct(plain_us), up_split,
                up_split_us, down_split, down_split_us, swept_us, pct(swept_us));
  }
}

}  // namespace

// `bench-gemv moe`: the MoE part only.
int main(int argc, char** argv) {
  const bool moe_only = argc > 1 && std::string(argv[1]) == "moe";
  Stream stream;
  const double copy_gbs = bench::copy_bandwidth_gbs(stream);
  std::printf("device copy bandwidth (cudaMemcpy D2D 1 GiB, read+write): %.0f GB/s\n\n", copy_gbs);

  std::printf("w8a16_gemv (MXFP8 weights, bf16 x/y) vs cuBLASLt bf16; GB/s on fp8 + scale bytes\n");
  std::printf("(default: automatic split-K, PDL on; no PDL: automatic split, plain launches; best split: forced split-K\n"
              "sweep with PDL, splits:us; consecutive calls in one graph read different weights)\n");
  std::printf("| shape K->N | M | us | GB/s | of copy | no-PDL us | no-PDL of copy | best split | cuBLASLt bf16 us | speedup "
              "| cuBLASLt fp8 us | fp8 us / ours |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  const std::vector<Dense> dense{
      {"Qwen3-30B-A3B qkv 2048->5120", 2048, 5120}, {"Qwen3 o_proj 4096->2048", 4096, 2048},
      {"Qwen3 lm_head 2048->151936", 2048, 151936}, {"Mixtral qkv 4096->6144", 4096, 6144},
      {"Mixtral w1/w3 4096->14336", 4096, 14336},   {"Mixtral w2 14336->4096", 14336, 4096}};
  for (const Dense& s : moe_only ? std::vector<Dense>{} : dense)
    bench_dense(s, copy_gbs, stream);

  std::printf("\nMoE decode, MXFP8 experts (gate/up + down); GB/s on the bytes of the experts read\n");
  std::printf("| model | T | experts | gate_up us | down us | total us | GB/s | of copy | no-PDL total | best gate_up split "
              "| best down split | both at best splits |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const Moe& s : {Moe{"Qwen3-30B-A3B E128 k8 H2048 I768", 128, 2048, 768, 8},
                       Moe{"Mixtral E8 k2 H4096 I14336", 8, 4096, 14336, 2}})
    bench_moe(s, copy_gbs, stream);
  std::printf("\nMoE split-K sweeps (splits:us, automatic split otherwise):\n");
  for (const std::string& line : g_moe_sweeps) std::printf("  %s\n", line.c_str());
  return 0;
}
