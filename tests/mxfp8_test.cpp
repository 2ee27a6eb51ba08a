// MXFP8 CPU reference: against ml_dtypes golden vectors, the OCP/RCEIL rules on crafted blocks,
// the round-trip error bound, errors, and the 128x4 scale layout against an independent derivation.
#include <gtest/gtest.h>

#include <bit>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/error.h"
#include "engine/numerics.h"
#include "kernels/mxfp8.h"
#include "test_util.h"

using namespace mxmoe;
using mxmoe::testing::fresh_seed;
using mxmoe::testing::random_tensor;

namespace {

Tensor f32_tensor(const std::vector<float>& v, const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::f32, Device::cpu);
  std::copy(v.begin(), v.end(), t.data_as<float>());
  return t;
}

MxTensor quantize(const Tensor& x, ScaleRule rule, int64_t* nonfinite = nullptr) {
  MxTensor q = mxfp8_empty(x.shape(), Device::cpu);
  const int64_t n = mxfp8_quantize_ref(x, q, rule);
  if (nonfinite) *nonfinite = n;
  return q;
}

std::vector<uint8_t> bytes(const Tensor& t) {
  return {t.data_as<uint8_t>(), t.data_as<uint8_t>() + t.numel()};
}

// One 32-element block with the given leading values, the rest filler of magnitude `fill`.
Tensor block_with(std::vector<float> lead, float fill = 0.f) {
  std::vector<float> v(kMxBlock, 0.f);
  for (int i = 0; i < kMxBlock; ++i) v[i] = i < int(lead.size()) ? lead[i] : fill * float((i % 7) - 3) / 3.f;
  return f32_tensor(v, {1, kMxBlock});
}

}  // namespace

TEST(Mxfp8Ref, MatchesMlDtypesGolden) {
  std::ifstream in(std::string(MXMOE_TEST_DATA) + "/mxfp8_golden.json");
  ASSERT_TRUE(in) << "missing tests/data/mxfp8_golden.json";
  const nlohmann::json g = nlohmann::json::parse(in);
  const int64_t k = g["k"];
  const auto bits = g["input_f32_bits"].get<std::vector<uint32_t>>();
  const int64_t rows = int64_t(bits.size()) / k;
  std::vector<float> values(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) values[i] = std::bit_cast<float>(bits[i]);
  Tensor x32 = f32_tensor(values, {rows, k});
  // The golden inputs are bf16-representable, so the bf16 path must give the same bytes.
  Tensor x16 = Tensor::empty({rows, k}, DType::bf16, Device::cpu);
  from_f32_vector(values, x16);
  for (const char* rule_name : {"rceil", "ocp"}) {
    const ScaleRule rule = std::string(rule_name) == "rceil" ? ScaleRule::rceil : ScaleRule::ocp;
    const auto want_scales = g[rule_name]["scales"].get<std::vector<uint8_t>>();
    const auto want_elems = g[rule_name]["elems"].get<std::vector<uint8_t>>();
    for (const Tensor& x : {x32, x16}) {
      const MxTensor q = quantize(x, rule);
      const auto scales = bytes(q.scales), elems = bytes(q.elems);
      for (size_t b = 0; b < want_scales.size(); ++b) ASSERT_EQ(scales[b], want_scales[b]) << rule_name << " block " << b;
      for (size_t i = 0; i < want_elems.size(); ++i)
        ASSERT_EQ(elems[i], want_elems[i]) << rule_name << " element " << i << " input " << values[i] << " block scale "
                                           << int(scales[i / kMxBlock]) << " dtype " << dtype_name(x.dtype());
    }
  }
}

TEST(Mxfp8Ref, ScaleRuleAtPowerOfTwoBoundaries) {
  for (int k : {-100, -10, 0, 7, 100}) {
    const float s = std::ldexp(1.f, k);
    // amax exactly 448·2^k: scale 2^k, element 448 (0x7E), for both rules' RCEIL; OCP gives the same here.
    MxTensor q = quantize(block_with({448.f * s}, s), ScaleRule::rceil);
    EXPECT_EQ(q.scales.data_as<uint8_t>()[0], 127 + k);
    EXPECT_EQ(q.elems.data_as<uint8_t>()[0], 0x7E);
    // Just above: RCEIL moves to 2^(k+1) so nothing saturates.
    q = quantize(block_with({std::nextafter(448.f * s, INFINITY)}, s), ScaleRule::rceil);
    EXPECT_EQ(q.scales.data_as<uint8_t>()[0], 128 + k);
    // Just below: stays at 2^k.
    q = quantize(block_with({std::nextafter(448.f * s, 0.f)}, s), ScaleRule::rceil);
    EXPECT_EQ(q.scales.data_as<uint8_t>()[0], 127 + k);
  }
}

TEST(Mxfp8Ref, OcpRuleClampsWhereRceilDoesNot) {
  // amax 500: OCP scale 2^(floor(log2 500) - 8) = 1, so 500 clamps to 448; RCEIL picks 2 and keeps 500 -> 250.
  const Tensor x = block_with({500.f, -1.f});
  const MxTensor ocp = quantize(x, ScaleRule::ocp), rceil = quantize(x, ScaleRule::rceil);
  EXPECT_EQ(ocp.scales.data_as<uint8_t>()[0], 127);
  EXPECT_EQ(e4m3_to_f32(ocp.elems.data_as<uint8_t>()[0]), 448.f);
  EXPECT_EQ(rceil.scales.data_as<uint8_t>()[0], 128);
  EXPECT_EQ(e4m3_to_f32(rceil.elems.data_as<uint8_t>()[0]), 256.f);  // 250 rounds to 256 in e4m3 (ulp 32)
}

TEST(Mxfp8Ref, ZeroSubnormalAndSingleElementBlocks) {
  MxTensor q = quantize(block_with({}), ScaleRule::rceil);
  EXPECT_EQ(q.scales.data_as<uint8_t>()[0], 0);
  for (uint8_t e : bytes(q.elems)) EXPECT_EQ(e & 0x7f, 0);

  // f32 subnormal amax: the scale clamps to 2^-127 (byte 0); 2^-130 is still exact there (0.125 · 2^-127),
  // while 2^-140 is below the smallest MXFP8 magnitude (2^-9 · 2^-127) and flushes to zero.
  const float tiny = std::ldexp(1.f, -130), below = std::ldexp(1.f, -140);
  q = quantize(block_with({tiny, -tiny / 2, below}), ScaleRule::rceil);
  EXPECT_EQ(q.scales.data_as<uint8_t>()[0], 0);
  EXPECT_EQ(e4m3_to_f32(q.elems.data_as<uint8_t>()[0]) * e8m0_value(0), tiny);
  EXPECT_EQ(e4m3_to_f32(q.elems.data_as<uint8_t>()[1]) * e8m0_value(0), -tiny / 2);
  EXPECT_EQ(e4m3_to_f32(q.elems.data_as<uint8_t>()[2]), 0.f);

  q = quantize(block_with({-3.f}), ScaleRule::rceil);  // 3/448 -> 2^-7; -3·2^7 = -384 exactly
  EXPECT_EQ(q.scales.data_as<uint8_t>()[0], 127 - 7);
  EXPECT_EQ(e4m3_to_f32(q.elems.data_as<uint8_t>()[0]), -384.f);
}

TEST(Mxfp8Ref, NonFiniteBlocksBecomeNanAndAreCounted) {
  std::vector<float> v(2 * kMxBlock, 1.f);
  v[3] = NAN;
  int64_t nonfinite = 0;
  MxTensor q = quantize(f32_tensor(v, {1, 2 * kMxBlock}), ScaleRule::rceil, &nonfinite);
  EXPECT_EQ(nonfinite, 1);
  EXPECT_EQ(q.scales.data_as<uint8_t>()[0], kE8M0Nan);
  EXPECT_NE(q.scales.data_as<uint8_t>()[1], kE8M0Nan);  // the other block is untouched
  Tensor back = Tensor::empty({1, 2 * kMxBlock}, DType::f32, Device::cpu);
  mxfp8_dequantize_ref(q, back);
  EXPECT_TRUE(std::isnan(back.data_as<float>()[0]));
  EXPECT_EQ(back.data_as<float>()[kMxBlock], 1.f);

  v[3] = -INFINITY;
  quantize(f32_tensor(v, {1, 2 * kMxBlock}), ScaleRule::rceil, &nonfinite);
  EXPECT_EQ(nonfinite, 1);
}

TEST(Mxfp8Ref, RoundTripWithinHalfUlpAtBlockScale) {
  std::mt19937_64 rng(fresh_seed());
  for (DType dtype : {DType::f32, DType::bf16, DType::f16}) {
    for (float magnitude : {1e-3f, 1.f, 3e3f}) {
      const Tensor x = random_tensor({16, 256}, dtype, rng, magnitude);
      const MxTensor q = quantize(x, ScaleRule::rceil);
      Tensor back = Tensor::empty(x.shape(), DType::f32, Device::cpu);
      mxfp8_dequantize_ref(q, back);
      const std::vector<float> xv = to_f32_vector(x);
      for (int64_t i = 0; i < x.numel(); ++i) {
        const float scale = e8m0_value(q.scales.data_as<uint8_t>()[i / kMxBlock]);
        const float v = std::fabs(xv[i]) / scale;  // <= 448 under RCEIL
        ASSERT_LE(v, kE4M3Max);
        const int binade = v == 0 ? -6 : std::max(log2_split(v).floor_log2, -6);
        const float half_ulp = std::ldexp(1.f, binade - 4) * scale;
        ASSERT_LE(std::fabs(back.data_as<float>()[i] - xv[i]), half_ulp) << "element " << i << " of " << xv[i];
      }
    }
  }
}

TEST(Mxfp8Ref, DequantizeToBf16RoundsTheF32Value) {
  std::mt19937_64 rng(fresh_seed());
  const Tensor x = random_tensor({4, 64}, DType::f32, rng, 5.f);
  const MxTensor q = quantize(x, ScaleRule::rceil);
  Tensor f = Tensor::empty(x.shape(), DType::f32, Device::cpu), b = Tensor::empty(x.shape(), DType::bf16, Device::cpu);
  mxfp8_dequantize_ref(q, f);
  mxfp8_dequantize_ref(q, b);
  for (int64_t i = 0; i < x.numel(); ++i)
    ASSERT_EQ(b.data_as<uint16_t>()[i], f32_to_bf16(f.data_as<float>()[i]));  // e4m3·2^s fits bf16 exactly
}

TEST(Mxfp8Ref, RejectsBadShapesWithClearErrors) {
  const Tensor x = Tensor::empty({4, 100}, DType::f32, Device::cpu);
  try {
    mxfp8_empty(x.shape(), Device::cpu);
    FAIL() << "K = 100 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("100"), std::string::npos) << e.what();
  }
  const Tensor y = Tensor::empty({4, 64}, DType::f32, Device::cpu);
  MxTensor wrong = mxfp8_empty({4, 32}, Device::cpu);
  EXPECT_THROW(mxfp8_quantize_ref(y, wrong, ScaleRule::rceil), Error);
  MxTensor ok = mxfp8_empty({4, 64}, Device::cpu);
  EXPECT_THROW(mxfp8_quantize_ref(Tensor::empty({4, 64}, DType::i32, Device::cpu), ok, ScaleRule::rceil), Error);
}

// The tiled layout re-derived by walking it in storage order: 512-byte tiles (128 rows x 4
// columns), row-tiles outer, column-tiles inner; inside a tile, 32 lines of 16 bytes where line
// i holds rows i, i+32, i+64, i+96, each with its 4 columns.
TEST(Mxfp8Ref, SwizzleMatchesIndependentDerivation) {
  std::mt19937_64 rng(fresh_seed());
  for (auto [batch, rows, cols] : {std::tuple{1, 128, 4}, {1, 200, 7}, {3, 5, 1}, {2, 300, 64}}) {
    Tensor s = Tensor::empty({batch, rows, cols}, DType::e8m0, Device::cpu);
    for (int64_t i = 0; i < s.numel(); ++i) s.data_as<uint8_t>()[i] = uint8_t(1 + rng() % 254);
    Tensor out = Tensor::empty(swizzled_scales_shape(s.shape()), DType::e8m0, Device::cpu);
    mxfp8_swizzle_scales_ref(s, out);

    std::vector<uint8_t> expect;
    const int64_t row_tiles = (rows + 127) / 128, col_tiles = (cols + 3) / 4;
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t rt = 0; rt < row_tiles; ++rt)
        for (int64_t ct = 0; ct < col_tiles; ++ct)
          for (int64_t line = 0; line < 32; ++line)
            for (int64_t quarter = 0; quarter < 4; ++quarter)
              for (int64_t col = 0; col < 4; ++col) {
                const int64_t r = rt * 128 + quarter * 32 + line, c = ct * 4 + col;
                expect.push_back(r < rows && c < cols ? s.data_as<uint8_t>()[(b * rows + r) * cols + c] : 0);
              }
    ASSERT_EQ(bytes(out), expect) << batch << "x" << rows << "x" << cols;
  }
}
