// RMSNorm at decode and prefill shapes: plain (rmsnorm), fused residual add (add_rmsnorm), and the
// per-head QK-norm on the q and k views of a fused QKV row (Qwen3: [T, 32 + 4 heads, 128] of
// [T, 40·128]). Microseconds per call from CUDA-graph replays of back-to-back calls, as the decode
// graphs run them (activations L2-resident); for the large T rows, GB/s of bytes moved against
// the device copy bandwidth measured in the same run. Last, the decode shapes with programmatic
// dependent launch on and off (kernels/pdl_switch.h), graphs of back-to-back calls: the time one
// launch gap costs.
#include <cstdio>

#include "apps/bench_util.h"
#include "kernels/pdl_switch.h"
#include "kernels/rmsnorm.h"

using namespace mxmoe;

namespace {

constexpr int kCalls = 64;

void report(const char* what, int64_t t, int64_t h, double bytes, double ms, double copy_gbs) {
  const double gbs = bytes / (ms * 1e-3) / 1e9;
  std::printf("| %s | %lld | %lld | %.2f us | %.0f GB/s | %.1f%% |\n", what, (long long)t, (long long)h, ms * 1e3, gbs,
              100 * gbs / copy_gbs);
}

}  // namespace

int main() {
  Stream stream;
  const double copy_gbs = bench::copy_bandwidth_gbs(stream);
  std::printf("device copy bandwidth (read+write): %.0f GB/s\n\n", copy_gbs);
  std::printf("| op | T | row | time per call | bytes/time | of copy BW |\n|---|---|---|---|---|---|\n");
  uint64_t seed = 1;
  for (const int64_t h : {2048, 4096}) {
    for (const int64_t t : {1, 8, 64, 4096}) {
      const Tensor x = bench::random_bf16({t, h}, seed++, 1.f, stream), w = bench::random_bf16({h}, seed++, 0.1f, stream);
      const Tensor res = bench::random_bf16({t, h}, seed++, 1.f, stream);
      const Tensor out = Tensor::empty({t, h}, DType::bf16, Device::cuda);
      const double row_bytes = double(t) * h * 2;
      const double ms = bench::graph_ms_per_call(stream, kCalls, [&](int) { rmsnorm(x, w, 1e-6f, out, stream); });
      report("rmsnorm", t, h, 2 * row_bytes, ms, copy_gbs);
      const double add_ms =
          bench::graph_ms_per_call(stream, kCalls, [&](int) { add_rmsnorm(res, x, w, 1e-6f, out, stream); });
      report("add_rmsnorm", t, h, 4 * row_bytes, add_ms, copy_gbs);
    }
  }
  constexpr int64_t kQ = 32, kKv = 4, kHd = 128, kWidth = (kQ + 2 * kKv) * kHd;  // Qwen3-30B-A3B
  for (const int64_t t : {1, 8, 64, 4096}) {
    const Tensor qkv = bench::random_bf16({t, kWidth}, seed++, 1.f, stream), w = bench::random_bf16({kHd}, seed++, 0.1f, stream);
    const Tensor q = qkv.narrow(1, 0, kQ * kHd), k = qkv.narrow(1, kQ * kHd, kKv * kHd);  // [T, heads·128], stride 40·128
    const double ms = bench::graph_ms_per_call(stream, kCalls, [&](int) {
      rmsnorm(q, w, 1e-6f, q, stream);
      rmsnorm(k, w, 1e-6f, k, stream);
    });
    report("q_norm + k_norm (2 calls)", t, kHd, 2.0 * t * (kQ + kKv) * kHd * 2, ms, copy_gbs);
  }
  const bool pdl_default = pdl_enabled();
  std::printf("\n| op | T | row | PDL on | PDL off | saved per call |\n|---|---|---|---|---|---|\n");
  for (const int64_t h : {2048, 4096}) {
    for (const int64_t t : {1, 8}) {
      const Tensor x = bench::random_bf16({t, h}, seed++, 1.f, stream), w = bench::random_bf16({h}, seed++, 0.1f, stream);
      const Tensor res = bench::random_bf16({t, h}, seed++, 1.f, stream);
      const Tensor out = Tensor::empty({t, h}, DType::bf16, Device::cuda);
      const auto compare = [&](const char* what, auto&& call) {
        double ms[2];
        for (const bool on : {true, false}) {
          set_pdl_enabled(on);
          ms[on ? 0 : 1] = bench::graph_ms_per_call(stream, kCalls, [&](int) { call(); });
        }
        std::printf("| %s | %lld | %lld | %.2f us | %.2f us | %.2f us |\n", what, (long long)t, (long long)h,
                    ms[0] * 1e3, ms[1] * 1e3, (ms[1] - ms[0]) * 1e3);
      };
      compare("rmsnorm", [&] { rmsnorm(x, w, 1e-6f, out, stream); });
      compare("add_rmsnorm", [&] { add_rmsnorm(res, x, w, 1e-6f, out, stream); });
    }
  }
  set_pdl_enabled(pdl_default);
  return 0;
}
