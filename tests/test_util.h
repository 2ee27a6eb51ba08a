#pragma once
// Shared test helpers: fresh random tensors (never zeros) and the relative-error metric.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "engine/error.h"
#include "engine/memory.h"
#include "engine/tensor.h"
#include "kernels/matmul_ref.h"

namespace mxmoe::testing {

// A fresh seed, printed (ctest shows the output of a failed test) so that MXMOE_SEED=... replays it.
inline uint64_t fresh_seed() {
  if (const char* s = std::getenv("MXMOE_SEED")) return std::strtoull(s, nullptr, 10);
  const uint64_t seed = std::random_device{}();
  std::printf("MXMOE_SEED=%llu replays this test\n", static_cast<unsigned long long>(seed));
  return seed;
}

// CPU tensor of normal(mean, std) values in `dtype`.
inline Tensor random_tensor(const Shape& shape, DType dtype, std::mt19937_64& rng, float std = 1.f, float mean = 0.f) {
  Tensor t = Tensor::empty(shape, dtype, Device::cpu);
  std::normal_distribution<float> dist(mean, std);
  std::vector<float> v(size_t(t.numel()));
  for (float& x : v) x = dist(rng);
  from_f32_vector(v, t);
  return t;
}

// ‖out − ref‖ / ‖ref‖ over all elements; NaN/Inf anywhere in out gives +inf (never passes).
inline double rel_error(const Tensor& out, const Tensor& ref) {
  const std::vector<float> a = to_f32_vector(out.device() == Device::cpu ? out : out.to(Device::cpu));
  const std::vector<float> b = to_f32_vector(ref.device() == Device::cpu ? ref : ref.to(Device::cpu));
  EXPECT_EQ(a.size(), b.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += double(a[i] - b[i]) * double(a[i] - b[i]);
    den += double(b[i]) * double(b[i]);
  }
  return den == 0 ? (num == 0 ? 0 : INFINITY) : std::sqrt(num / den);
}

// Same shape, dtype and bytes; either tensor on any device (compared on the host).
inline bool same_bytes(const Tensor& a, const Tensor& b) {
  const Tensor ha = a.device() == Device::cpu ? a : a.to(Device::cpu);
  const Tensor hb = b.device() == Device::cpu ? b : b.to(Device::cpu);
  return ha.shape() == hb.shape() && ha.dtype() == hb.dtype() && std::memcmp(ha.data(), hb.data(), ha.nbytes()) == 0;
}

// The message of the mxmoe::Error that f() throws, or "(no error)".
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace mxmoe::testing

#define MXMOE_REQUIRE_GPU() \
  if (!::mxmoe::cuda_available()) GTEST_SKIP() << "no CUDA device"

// Skips the test unless at least n GPUs are visible (multi-GPU tests on a one-GPU machine).
#define MXMOE_REQUIRE_GPUS(n)                                                                                    \
  MXMOE_REQUIRE_GPU();                                                                                         \
  if (::mxmoe::cuda_device_count() < (n))                                                                      \
  GTEST_SKIP() << "needs " << (n) << " GPUs; " << ::mxmoe::cuda_device_count() << " visible"
