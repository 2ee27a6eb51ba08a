// Quantize throughput (issue 2): GB/s of bytes read + written, as a fraction of the device copy
// bandwidth measured in the same run. Target >= 80%.
#include <bit>
#include <cstdio>
#include <random>

#include "apps/bench_util.h"
#include "kernels/mxfp8.h"

using namespace mxmoe;

namespace {

// Inputs are filled on the host with random bf16 (never zeros), several copies so repeated
// runs do not read from L2.
void bench_quantize(const char* name, const Shape& shape, double copy_gbs, cudaStream_t stream) {
  Tensor host = Tensor::empty(shape, DType::bf16, Device::cpu);
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.f, 1.f);
  auto* h = host.data_as<uint16_t>();
  for (int64_t i = 0; i < host.numel(); ++i) h[i] = uint16_t(std::bit_cast<uint32_t>(dist(rng)) >> 16);
  const int copies = host.nbytes() > (size_t(256) << 20) ? 2 : 4;
  std::vector<Tensor> xs;
  std::vector<MxTensor> qs;
  for (int i = 0; i < copies; ++i) {
    xs.push_back(host.to(Device::cuda));
    qs.push_back(mxfp8_empty(shape, Device::cuda));
  }
  const double ms = bench::median_ms(stream, [&](int i) {
    mxfp8_quantize(xs[i % copies], qs[i % copies], ScaleRule::rceil, stream);
  });
  const double bytes = double(host.nbytes()) + double(qs[0].elems.nbytes()) + double(qs[0].scales.nbytes());
  const double gbs = bytes / (ms * 1e-3) / 1e9;
  std::printf("| quantize bf16 %-22s | %8.1f us | %7.0f GB/s | %5.1f%% |\n", name, ms * 1e3, gbs, 100 * gbs / copy_gbs);
}

}  // namespace

int main() {
  Stream stream;
  const double copy_gbs = bench::copy_bandwidth_gbs(stream);
  std::printf("device copy bandwidth (read+write): %.0f GB/s\n\n", copy_gbs);
  std::printf("| op | time | bandwidth | of copy |\n|---|---|---|---|\n");
  bench_quantize("8192x8192", {8192, 8192}, copy_gbs, stream);
  bench_quantize("128x1536x2048 (experts)", {128, 1536, 2048}, copy_gbs, stream);
  bench_quantize("8x28672x4096 (experts)", {8, 28672, 4096}, copy_gbs, stream);
  return 0;
}
