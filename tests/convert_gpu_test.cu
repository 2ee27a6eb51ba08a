// CUDA dtype conversion, non-finite counting and the dummy-weight fill against their CPU
// references (kernels/convert_ref.cpp): bit-exact for finite values, NaN stays NaN; outputs are
// poisoned first so an unwritten element fails.
#include <gtest/gtest.h>

#include <cstring>
#include <set>

#include "engine/cuda_check.h"
#include "engine/numerics.h"
#include "engine/stream.h"
#include "kernels/convert.h"
#include "test_util.h"

namespace mxmoe {
namespace {

using testing::fresh_seed;
using testing::random_tensor;

constexpr DType kFloats[] = {DType::f32, DType::bf16, DType::f16};

// Element i of a float CPU tensor as f32, and its raw bits.
float value(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::f32: return t.data_as<float>()[i];
    case DType::bf16: return bf16_to_f32(t.data_as<uint16_t>()[i]);
    default: return f16_to_f32(t.data_as<uint16_t>()[i]);
  }
}
uint32_t bits(const Tensor& t, int64_t i) {
  return t.dtype() == DType::f32 ? t.data_as<uint32_t>()[i] : t.data_as<uint16_t>()[i];
}

// Plants NaN and ±Inf at random places; returns how many.
int64_t plant_nonfinite(Tensor& t, std::mt19937_64& rng) {
  const float specials[] = {NAN, INFINITY, -INFINITY};
  int64_t planted = 0;
  std::set<int64_t> used;
  for (int k = 0; k < 9; ++k) {
    const int64_t i = int64_t(rng() % uint64_t(t.numel()));
    if (!used.insert(i).second) continue;
    const float v = specials[k % 3];
    if (t.dtype() == DType::f32) t.data_as<float>()[i] = v;
    else if (t.dtype() == DType::bf16) t.data_as<uint16_t>()[i] = f32_to_bf16(v);
    else t.data_as<uint16_t>()[i] = f32_to_f16(v);
    ++planted;
  }
  return planted;
}

// out (CPU copy of the GPU result) equals ref bit for bit, NaN for NaN.
void expect_equal(const Tensor& out, const Tensor& ref, const std::string& what) {
  ASSERT_EQ(out.numel(), ref.numel());
  int64_t mismatches = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    const bool ok = std::isnan(value(ref, i)) ? std::isnan(value(out, i)) : bits(out, i) == bits(ref, i);
    if (!ok && mismatches++ < 5)
      ADD_FAILURE() << what << " element " << i << ": got " << value(out, i) << " want " << value(ref, i);
  }
  EXPECT_EQ(mismatches, 0) << what;
}

Tensor poisoned_gpu(const Shape& shape, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype, Device::cuda);
  CUDA_CHECK(cudaMemset(t.data(), 0x55, t.nbytes()));  // finite garbage in every float format
  return t;
}

TEST(ConvertGpu, EveryDtypePairMatchesReference) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  Stream stream;
  Tensor count = Tensor::empty({1}, DType::i32, Device::cuda);
  for (DType from : kFloats)
    for (DType to : kFloats) {
      const std::string what = cat(dtype_name(from), " -> ", dtype_name(to));
      Tensor src = random_tensor({100003}, from, rng, 3.f);  // odd size: no vector-width luck
      if (from == DType::f32) src.data_as<float>()[17] = 1e5f;  // overflows f16 to Inf: still a finite input
      const int64_t planted = plant_nonfinite(src, rng);
      Tensor ref = Tensor::empty(src.shape(), to, Device::cpu);
      const int64_t ref_count = convert_dtype_ref(src, ref);
      EXPECT_EQ(ref_count, planted) << what;
      Tensor out = poisoned_gpu(src.shape(), to);
      CUDA_CHECK(cudaMemsetAsync(count.data(), 0, sizeof(int), stream));
      convert_dtype(src.to(Device::cuda), out, stream, count.data_as<int>());
      stream.synchronize();
      expect_equal(out.to(Device::cpu), ref, what);
      EXPECT_EQ(count.to(Device::cpu).data_as<int>()[0], planted) << what;
    }
}

TEST(ConvertGpu, CountNonfinite) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  Stream stream;
  Tensor count = Tensor::empty({1}, DType::i32, Device::cuda);
  for (DType t : kFloats) {
    Tensor x = random_tensor({65537}, t, rng);
    const int64_t planted = plant_nonfinite(x, rng);
    CUDA_CHECK(cudaMemsetAsync(count.data(), 0, sizeof(int), stream));
    count_nonfinite(x.to(Device::cuda), stream, count.data_as<int>());
    stream.synchronize();
    EXPECT_EQ(count.to(Device::cpu).data_as<int>()[0], planted) << dtype_name(t);
    EXPECT_EQ(count_nonfinite_ref(x), planted) << dtype_name(t);
  }
}

TEST(ConvertGpu, FillNormalMatchesReferenceAndStatistics) {
  MXMOE_REQUIRE_GPU();
  const uint64_t seed = fresh_seed();
  Stream stream;
  for (DType t : kFloats) {
    // A slice [outer=6, length=40 of full=96, inner=1000] of a larger tensor.
    const NormalFill fill{seed, 0.25f, 0.02f, {6, 96, 33, 40, 1000}};
    Tensor out = poisoned_gpu({6, 40, 1000}, t);
    fill_normal(out, fill, stream);
    stream.synchronize();
    Tensor ref = Tensor::empty({6, 40, 1000}, t, Device::cpu);
    fill_normal_ref(ref, fill);
    const Tensor host = out.to(Device::cpu);
    expect_equal(host, ref, cat("fill_normal ", dtype_name(t)));
    double sum = 0, sq = 0;
    for (int64_t i = 0; i < host.numel(); ++i) sum += value(host, i), sq += double(value(host, i)) * value(host, i);
    const double mean = sum / double(host.numel()), std = std::sqrt(sq / double(host.numel()) - mean * mean);
    EXPECT_NEAR(mean, 0.25, 0.02 * 0.01) << dtype_name(t);  // 240k samples: standard error 0.002·std
    EXPECT_NEAR(std / 0.02, 1.0, 0.01) << dtype_name(t);
    Tensor other = poisoned_gpu({6, 40, 1000}, t);
    fill_normal(other, {seed + 1, 0.25f, 0.02f, {6, 96, 33, 40, 1000}}, stream);
    stream.synchronize();
    EXPECT_NE(std::memcmp(other.to(Device::cpu).data(), host.data(), host.nbytes()), 0) << "seed must matter";
  }
}

}  // namespace
}  // namespace mxmoe
