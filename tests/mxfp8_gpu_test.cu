// MXFP8 CUDA kernels vs the CPU reference: bit-exact on fresh random inputs of many shapes and
// dtypes, with adversarial blocks planted among them.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "engine/error.h"
#include "engine/stream.h"
#include "kernels/mxfp8.h"
#include "test_util.h"

using namespace mxmoe;
using mxmoe::testing::fresh_seed;
using mxmoe::testing::random_tensor;

namespace {

// Overwrites some blocks of a random CPU tensor with the cases rounding gets wrong: amax exactly
// at 448·2^k or one ulp either side, f32/bf16 subnormals, huge values, all-zero blocks, a single
// nonzero element, mixed signs.
void plant_adversarial_blocks(Tensor& x, std::mt19937_64& rng) {
  std::vector<float> v = to_f32_vector(x);
  const int64_t blocks = x.numel() / kMxBlock;
  for (int64_t b = 0; b < blocks; b += 3) {
    float* blk = v.data() + b * kMxBlock;
    const float s = std::ldexp(1.f, int(rng() % 60) - 30);
    switch (rng() % 7) {
      case 0: blk[rng() % kMxBlock] = 448.f * s; break;
      case 1: blk[rng() % kMxBlock] = -std::nextafter(448.f * s, INFINITY); break;
      case 2: blk[rng() % kMxBlock] = std::nextafter(448.f * s, 0.f); break;
      case 3: for (int i = 0; i < kMxBlock; ++i) blk[i] = std::ldexp(float(int(rng() % 200) - 100), -140); break;
      case 4: for (int i = 0; i < kMxBlock; ++i) blk[i] = (i % 2 ? -1.f : 1.f) * std::ldexp(float(rng() % 1000), 110); break;
      case 5: std::memset(blk, 0, sizeof(float) * kMxBlock); break;
      case 6: std::memset(blk, 0, sizeof(float) * kMxBlock); blk[rng() % kMxBlock] = -s; break;
    }
  }
  from_f32_vector(v, x);
}

std::vector<uint8_t> host_bytes(const Tensor& t) {
  const Tensor h = t.device() == Device::cpu ? t : t.to(Device::cpu);
  return {h.data_as<uint8_t>(), h.data_as<uint8_t>() + h.nbytes()};
}

void poison(const Tensor& t) { CUDA_CHECK(cudaMemset(t.data(), 0xA5, t.nbytes())); }

// mxfp8_dequantize of qd (q's device copy) into a poisoned out_dtype tensor, and the reference's of
// q; both returned on the host.
struct Dequantized {
  Tensor got, ref;
};
Dequantized dequantize_both(const MxTensor& q, const MxTensor& qd, DType out_dtype, const Stream& stream) {
  const Shape& shape = q.elems.shape();
  Tensor ref = Tensor::empty(shape, out_dtype, Device::cpu);
  mxfp8_dequantize_ref(q, ref);
  Tensor got = Tensor::empty(shape, out_dtype, Device::cuda);
  poison(got);
  mxfp8_dequantize(qd, got, stream);
  stream.synchronize();
  return {got.to(Device::cpu), ref};
}

}  // namespace

TEST(Mxfp8Gpu, QuantizeIsBitExactWithReference) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  Stream stream;
  const std::vector<Shape> shapes = {{1, 32}, {3, 64}, {7, 96}, {128, 2048}, {5, 4096}, {4, 24, 160}, {2, 8, 14336}};
  for (const Shape& shape : shapes) {
    for (DType dtype : {DType::f32, DType::bf16, DType::f16}) {
      for (ScaleRule rule : {ScaleRule::rceil, ScaleRule::ocp}) {
        Tensor x = random_tensor(shape, dtype, rng, std::ldexp(1.f, int(rng() % 20) - 10));
        if (dtype != DType::f16) plant_adversarial_blocks(x, rng);  // f16 cannot hold most of them
        MxTensor ref = mxfp8_empty(shape, Device::cpu);
        const int64_t nonfinite_ref = mxfp8_quantize_ref(x, ref, rule);

        const Tensor xd = x.to(Device::cuda);
        MxTensor got = mxfp8_empty(shape, Device::cuda);
        poison(got.elems);
        poison(got.scales);
        Tensor count = Tensor::empty({1}, DType::i32, Device::cuda);
        CUDA_CHECK(cudaMemset(count.data(), 0, sizeof(int)));
        mxfp8_quantize(xd, got, rule, stream, count.data_as<int>());
        stream.synchronize();
        const std::string what = shape_str(shape) + " " + std::string(dtype_name(dtype)) +
                                 (rule == ScaleRule::rceil ? " rceil" : " ocp");
        ASSERT_EQ(host_bytes(got.scales), host_bytes(ref.scales)) << what;
        ASSERT_EQ(host_bytes(got.elems), host_bytes(ref.elems)) << what;
        ASSERT_EQ(count.to(Device::cpu).data_as<int>()[0], nonfinite_ref) << what;
      }
    }
  }
}

TEST(Mxfp8Gpu, NonFiniteInputsAreCountedAndNamed) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  Stream stream;
  Tensor x = random_tensor({8, 256}, DType::bf16, rng);
  std::vector<float> v = to_f32_vector(x);
  v[37] = NAN;
  v[1000] = INFINITY;
  from_f32_vector(v, x);
  MxTensor ref = mxfp8_empty(x.shape(), Device::cpu);
  EXPECT_EQ(mxfp8_quantize_ref(x, ref, ScaleRule::rceil), 2);
  MxTensor got = mxfp8_empty(x.shape(), Device::cuda);
  try {
    mxfp8_quantize_weight(x.to(Device::cuda), got, ScaleRule::rceil, stream, "layers.0.mlp.down_proj.weight");
    FAIL() << "NaN weight accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layers.0.mlp.down_proj.weight"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("2 NaN/Inf"), std::string::npos) << e.what();
  }
  EXPECT_EQ(host_bytes(got.scales), host_bytes(ref.scales));  // NaN blocks marked the same way
}

TEST(Mxfp8Gpu, DequantizeIsBitExactWithReference) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  Stream stream;
  for (const Shape& shape : std::vector<Shape>{{1, 32}, {9, 160}, {3, 64, 2048}}) {
    const Tensor x = random_tensor(shape, DType::f32, rng, 3.f);
    MxTensor q = mxfp8_empty(shape, Device::cpu);
    mxfp8_quantize_ref(x, q, ScaleRule::rceil);
    const MxTensor qd{q.elems.to(Device::cuda), q.scales.to(Device::cuda)};
    for (DType out_dtype : {DType::f32, DType::bf16}) {
      const Dequantized d = dequantize_both(q, qd, out_dtype, stream);
      ASSERT_EQ(host_bytes(d.got), host_bytes(d.ref)) << shape_str(shape) << " -> " << dtype_name(out_dtype);
    }
  }
}

// Every byte pattern, not only what quantization writes: random element bytes (e4m3 NaN codes
// 0x7f/0xff included) under every scale byte 0..255 (0: 2^-127, above 134 the wide path of the bf16
// conversion, 255: NaN). Equal bits, except that any NaN matches any NaN.
TEST(Mxfp8Gpu, DequantizeEveryByteMatchesReference) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  Stream stream;
  const Shape shape{256, 96};  // 768 blocks: every scale byte three times
  MxTensor q = mxfp8_empty(shape, Device::cpu);
  for (int64_t i = 0; i < q.elems.numel(); ++i) q.elems.data_as<uint8_t>()[i] = uint8_t(rng());
  for (int64_t i = 0; i < q.scales.numel(); ++i) q.scales.data_as<uint8_t>()[i] = uint8_t(i % 256);
  const MxTensor qd{q.elems.to(Device::cuda), q.scales.to(Device::cuda)};
  for (DType out_dtype : {DType::f32, DType::bf16}) {
    const Dequantized d = dequantize_both(q, qd, out_dtype, stream);
    const std::vector<float> g = to_f32_vector(d.got), r = to_f32_vector(d.ref);
    int64_t mismatches = 0, nans = 0;
    for (size_t i = 0; i < g.size(); ++i) {
      nans += std::isnan(r[i]);
      const bool same = std::isnan(r[i]) ? std::isnan(g[i]) : std::memcmp(&g[i], &r[i], sizeof(float)) == 0;
      if (!same && ++mismatches <= 5)
        ADD_FAILURE() << dtype_name(out_dtype) << " element " << i << ": got " << g[i] << ", reference " << r[i]
                      << " (byte " << int(q.elems.data_as<uint8_t>()[i]) << ", scale "
                      << int(q.scales.data_as<uint8_t>()[i / kMxBlock]) << ")";
    }
    EXPECT_EQ(mismatches, 0) << dtype_name(out_dtype);
    EXPECT_GT(nans, 0);  // the NaN codes and the NaN scale were exercised
  }
}

TEST(Mxfp8Gpu, SwizzleIsBitExactWithReference) {
  MXMOE_REQUIRE_GPU();
  std::mt19937_64 rng(fresh_seed());
  Stream stream;
  for (const Shape& shape : std::vector<Shape>{{1, 128, 4}, {200, 7}, {3, 300, 64}, {128, 1536, 64}}) {
    Tensor s = Tensor::empty(shape, DType::e8m0, Device::cpu);
    for (int64_t i = 0; i < s.numel(); ++i) s.data_as<uint8_t>()[i] = uint8_t(rng() % 255);
    Tensor ref = Tensor::empty(swizzled_scales_shape(shape), DType::e8m0, Device::cpu);
    mxfp8_swizzle_scales_ref(s, ref);
    Tensor got = Tensor::empty(ref.shape(), DType::e8m0, Device::cuda);
    poison(got);
    mxfp8_swizzle_scales(s.to(Device::cuda), got, stream);
    stream.synchronize();
    ASSERT_EQ(host_bytes(got), host_bytes(ref)) << shape_str(shape);
  }
}
