// Linear-layer benchmark (issue 4), timed through LinearLayer::forward, i.e. what the engine runs,
// on the real shapes of Qwen3-30B-A3B and Mixtral-8x7B. All ratios come from this one run:
//  M = 1, 4, 16: GB/s on the weight + scale bytes, as a fraction of the device copy bandwidth
//    (target >= 85%), and the speedup over the bf16 layer (cuBLASLt bf16; target >= 1.7x);
//  M = 128, 512, 2048: TFLOP/s and the ratio to the bf16 layer (target at 2048: >= 0.9x).
// Also the "dequant-cublaslt" MXFP8 fallback, for comparison. Each variant is built as enough
// layer copies (>= 256 MB of weights, L2 is 50 MB) that every call reads its weight from DRAM;
// time per call = median of 20 replays of a CUDA graph of >= 16 calls over the copies.
#include <cuda_bf16.h>

#include <cstdio>
#include <iterator>
#include <memory>
#include <vector>

#include "apps/bench_util.h"
#include "engine/gpu_info.h"
#include "engine/linear.h"
#include "engine/log.h"

using namespace mxmoe;

namespace {

constexpr size_t kRotateBytes = size_t(256) << 20;

__global__ void fill_bf16(__nv_bfloat16* p, size_t n, uint32_t seed, float scale) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t x = uint32_t(i) * 0x9E3779B9u + uint32_t(i >> 32) * 0x7feb352du + seed;
    x ^= x >> 16;
    x *= 0x85ebca6bu;
    x ^= x >> 13;
    x *= 0xc2b2ae35u;
    x ^= x >> 16;
    p[i] = __float2bfloat16((float(x) * 2.3283064e-10f - 0.5f) * 2.f * scale);  // uniform in ±scale
  }
}

uint32_t g_seed = 1;
void fill(const Tensor& t, float scale) {
  fill_bf16<<<1024, 256>>>(t.data_as<__nv_bfloat16>(), size_t(t.numel()), g_seed++, scale);
  CUDA_CHECK_LAUNCH();
}

struct Variant {
  const char* label;
  QuantConfig quant;
  double bytes_per_weight;  // bytes the layer reads per weight element
};

// Copies of one layer with random weights, enough to keep the working set out of L2.
std::vector<std::unique_ptr<LinearLayer>> make_copies(int64_t k, int64_t n, const Variant& v) {
  const size_t bytes = size_t(double(n * k) * v.bytes_per_weight);
  const size_t copies = std::max<size_t>(2, (kRotateBytes + bytes - 1) / bytes);
  std::vector<std::unique_ptr<LinearLayer>> layers;
  for (size_t i = 0; i < copies; ++i) {
    auto layer = std::make_unique<LinearLayer>(LinearConfig{"bench", k, {{"bench", n}}}, v.quant);
    layer->begin_loading();
    fill(layer->weight, 0.05f);
    CUDA_CHECK(cudaDeviceSynchronize());
    layer->finish_loading();
    layers.push_back(std::move(layer));
  }
  return layers;
}

// Milliseconds per forward call, rotating over the copies inside one CUDA graph.
double ms_per_call(std::vector<std::unique_ptr<LinearLayer>>& layers, const Tensor& x, const Tensor& out,
                   const Stream& stream) {
  for (auto& l : layers) l->forward(x, out, stream);  // plans, workspaces, first-call setup
  stream.synchronize();
  const int calls = int(std::max<size_t>(16, layers.size()));
  cudaGraph_t graph = nullptr;
  CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < calls; ++i) layers[size_t(i) % layers.size()]->forward(x, out, stream);
  CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec = nullptr;
  CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  const double ms = bench::median_ms(stream, [&](int) { CUDA_CHECK(cudaGraphLaunch(exec, stream)); }, 3, 20);
  CUDA_CHECK(cudaGraphExecDestroy(exec));
  CUDA_CHECK(cudaGraphDestroy(graph));
  return ms / calls;
}

}  // namespace

int main() {
  set_log_level(LogLevel::warn);  // one backend line per layer copy would drown the table
  const Stream stream;
  const double copy_gbs = bench::copy_bandwidth_gbs(stream);
  std::printf("GPU sm_%d%d, %d SMs; device copy bandwidth (read+write) %.0f GB/s\n", gpu_info().major,
              gpu_info().minor, gpu_info().sm_count, copy_gbs);

  struct Case {
    const char* model;
    int64_t k, n;
  };
  const Case cases[] = {{"qwen3 qkv", 2048, 5120},      {"qwen3 o_proj", 4096, 2048},
                        {"qwen3 lm_head", 2048, 151936}, {"mixtral qkv", 4096, 6144},
                        {"mixtral w1/w3", 4096, 14336},  {"mixtral w2", 14336, 4096}};
  QuantConfig mx, dequant, bf16;
  dequant.mxfp8_backend = "dequant-cublaslt";
  bf16.scheme = "bf16";
  const Variant variants[] = {{"mxfp8", mx, 1 + 1.0 / 32}, {"mxfp8 dequant", dequant, 1 + 1.0 / 32},
                              {"bf16", bf16, 2}};
  const int64_t ms[] = {1, 4, 16, 32, 64, 128, 512, 2048, 4096};
  constexpr int kMs = int(std::size(ms));

  std::printf("\n%-14s %5s %6s %5s | %-8s %9s %8s %6s | %12s | %13s %8s\n", "shape", "K", "N", "M", "mxfp8 on",
              "us", "GB/s|TF", "%copy", "dequant us", "bf16 us", "mx/bf16");
  for (const Case& c : cases) {
    double t[3][kMs];
    std::string backend;
    for (int v = 0; v < 3; ++v) {
      auto layers = make_copies(c.k, c.n, variants[v]);
      if (v == 0) backend = layers[0]->backend();
      for (int i = 0; i < kMs; ++i) {
        const Tensor x = Tensor::empty({ms[i], c.k}, DType::bf16, Device::cuda);
        const Tensor out = Tensor::empty({ms[i], c.n}, DType::bf16, Device::cuda);
        fill(x, 1.f);
        t[v][i] = ms_per_call(layers, x, out, stream);
      }
    }
    for (int i = 0; i < kMs; ++i) {
      const int64_t m = ms[i];
      const double us = t[0][i] * 1e3;
      const bool decode = m <= 16;
      // Decode: bytes of weight + scales; prefill: TFLOP/s.
      const double rate = decode ? double(c.n * c.k) * variants[0].bytes_per_weight / (t[0][i] * 1e-3) / 1e9
                                 : 2.0 * double(m * c.n * c.k) / (t[0][i] * 1e-3) / 1e12;
      char pct[16] = "";
      if (decode) std::snprintf(pct, sizeof(pct), "%5.1f%%", 100.0 * rate / copy_gbs);
      std::printf("%-14s %5lld %6lld %5lld | %-8s %9.2f %8.1f %6s | %12.2f | %13.2f %7.2fx\n", c.model,
                  (long long)c.k, (long long)c.n, (long long)m, backend.c_str(), us, rate, pct, t[1][i] * 1e3,
                  t[2][i] * 1e3, t[2][i] / t[0][i]);
    }
  }
  std::printf("\nGB/s|TF: GB/s on weight+scale bytes for M <= 16, TFLOP/s for M = 2048. dequant: the MXFP8 layer "
              "forced to dequantize + cuBLASLt bf16. bf16: the bf16 layer (cuBLASLt). mx/bf16: bf16 time / mxfp8 time.\n");
  return 0;
}
