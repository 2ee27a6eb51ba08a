// Device sampler time per call (CUDA-graph replays) for a batch of rows over Qwen3's vocabulary
// (151936), greedy and with every filter on (temperature, top-k 50, top-p 0.9, min-p 0.05,
// repetition penalty over 256 previous tokens). One CTA per row: the batch runs in parallel.
#include <cstdio>
#include <cstring>
#include <random>

#include "apps/bench_util.h"
#include "kernels/sampling.h"

using namespace mxmoe;

namespace {

double time_us(int rows, bool greedy, cudaStream_t stream) {
  constexpr int64_t kVocab = 151936, kPrev = 256;
  constexpr int kCalls = 16;
  std::mt19937_64 rng(1);
  std::normal_distribution<float> d(0.f, 3.f);
  Tensor logits = Tensor::empty({rows, kVocab}, DType::f32, Device::cpu);
  for (int64_t i = 0; i < logits.numel(); ++i) logits.data_as<float>()[i] = d(rng);
  std::vector<SamplingParams> params(static_cast<size_t>(rows));
  for (SamplingParams& p : params) {
    if (greedy) {
      p.temperature = 0.f;
    } else {
      p.temperature = 0.7f;
      p.top_k = 50;
      p.top_p = 0.9f;
      p.min_p = 0.05f;
      p.repetition_penalty = 1.1f;
    }
  }
  Tensor pbytes = Tensor::empty({rows * int64_t(sizeof(SamplingParams))}, DType::u8, Device::cpu);
  std::memcpy(pbytes.data(), params.data(), pbytes.nbytes());
  Tensor off = Tensor::empty({rows + 1}, DType::i32, Device::cpu), prev = Tensor::empty({rows * kPrev}, DType::i32, Device::cpu);
  for (int b = 0; b <= rows; ++b) off.data_as<int32_t>()[b] = int32_t(b * kPrev);
  for (int64_t i = 0; i < prev.numel(); ++i) prev.data_as<int32_t>()[i] = int32_t(rng() % kVocab);
  const Tensor ld = logits.to(Device::cuda), pd = pbytes.to(Device::cuda), od = off.to(Device::cuda), prevd = prev.to(Device::cuda);
  Tensor ws = Tensor::empty({rows, kVocab}, DType::f32, Device::cuda), tokens = Tensor::empty({rows}, DType::i32, Device::cuda);
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  for (int i = 0; i < kCalls; ++i) sample(ld, pd, od, prevd, ws, tokens, stream);
  CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  const double ms = bench::median_ms(stream, [&](int) { CUDA_CHECK(cudaGraphLaunch(exec, stream)); }, 3, 20) / kCalls;
  CUDA_CHECK(cudaGraphExecDestroy(exec));
  CUDA_CHECK(cudaGraphDestroy(graph));
  return ms * 1e3;
}

}  // namespace

int main() {
  Stream stream;
  std::printf("sampler, vocabulary 151936\n| rows | greedy | all filters |\n|---|---|---|\n");
  for (int rows : {1, 8, 64}) {
    std::printf("| %d | %.1f us | %.1f us |\n", rows, time_us(rows, true, stream), time_us(rows, false, stream));
  }
  return 0;
}
