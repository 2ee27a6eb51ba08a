#pragma once
// Benchmark helpers: event timing (median of repeats after warm-up), the device-to-device copy
// bandwidth that every memory-bound kernel is compared against in the same run, and the plumbing of
// optional reference columns (a device scalar, a refused call printed as "-").
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/stream.h"
#include "engine/tensor.h"
#include "kernels/convert.h"

namespace mxmoe::bench {

// Median milliseconds of `fn(i)` over `repeats` runs after `warmup` runs; i counts calls so the
// caller can rotate buffers to keep data out of L2.
template <class Fn>
double median_ms(cudaStream_t stream, Fn&& fn, int warmup = 5, int repeats = 50) {
  int call = 0;
  for (int i = 0; i < warmup; ++i) fn(call++);
  std::vector<double> times;
  Event start, stop;
  for (int i = 0; i < repeats; ++i) {
    start.record(stream);
    fn(call++);
    stop.record(stream);
    stop.synchronize();
    times.push_back(stop.elapsed_since(start));
  }
  std::nth_element(times.begin(), times.begin() + repeats / 2, times.end());
  return times[repeats / 2];
}

// One f32 of value v on the device (a per-tensor scale operand).
inline Tensor device_scalar(float v) {
  Tensor t = Tensor::empty({1}, DType::f32, Device::cpu);
  *t.data_as<float>() = v;
  return t.to(Device::cuda);
}

// fn() (a time or a rate), or -1 where the library refuses the call, with its reason on stderr:
// a reference the GPU may not offer (cuBLASLt FP8) costs its column, not the run.
template <class Fn>
double unless_refused(const char* what, Fn&& fn) {
  try {
    return fn();
  } catch (const Error& e) {
    std::fprintf(stderr, "%s: %s\n", what, e.what());
    return -1;
  }
}

// printf(format, v), or "-" for a refused (negative) value.
inline std::string or_dash(double v, const char* format) {
  char text[32] = "-";
  if (v > 0) std::snprintf(text, sizeof(text), format, v);
  return text;
}

// Milliseconds per call of fn(0..calls-1) captured in one CUDA graph, median of 20 replays after 3
// (decode loops replay graphs, and this keeps host launch latency out of small cases). One call
// runs first, outside the capture, so workspaces grow before it.
template <class Fn>
double graph_ms_per_call(cudaStream_t stream, int calls, Fn&& fn) {
  fn(0);
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < calls; ++i) fn(i);
  CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  const double ms = median_ms(stream, [&](int) { CUDA_CHECK(cudaGraphLaunch(exec, stream)); }, 3, 20) / calls;
  CUDA_CHECK(cudaGraphExecDestroy(exec));
  CUDA_CHECK(cudaGraphDestroy(graph));
  return ms;
}

// Bytes read + written per second by cudaMemcpyAsync D2D of a 1 GiB buffer (far above L2).
inline double copy_bandwidth_gbs(cudaStream_t stream) {
  const size_t bytes = size_t(1) << 30;
  Tensor a = Tensor::empty({int64_t(bytes)}, DType::u8, Device::cuda);
  Tensor b = Tensor::empty({int64_t(bytes)}, DType::u8, Device::cuda);
  CUDA_CHECK(cudaMemsetAsync(a.data(), 1, bytes, stream));
  const double ms = median_ms(stream, [&](int) {
    CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice, stream));
  }, 3, 20);
  return 2.0 * double(bytes) / (ms * 1e-3) / 1e9;
}

// bf16 tensor of normal(0, std) values generated on the device (never zeros, no host round trip).
inline Tensor random_bf16(const Shape& shape, uint64_t seed, float std, cudaStream_t stream) {
  Tensor t = Tensor::empty(shape, DType::bf16, Device::cuda);
  NormalFill fill;
  fill.seed = seed;
  fill.std = std;
  fill.geometry = whole_tensor_geometry(t.numel());
  fill_normal(t, fill, stream);
  return t;
}

}  // namespace mxmoe::bench
