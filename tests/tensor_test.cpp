// Tensor views, copies and error messages on the CPU.
#include <gtest/gtest.h>

#include <numeric>

#include "engine/error.h"
#include "engine/tensor.h"

using namespace mxmoe;

namespace {

Tensor iota(const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::i32, Device::cpu);
  std::iota(t.data_as<int32_t>(), t.data_as<int32_t>() + t.numel(), 0);
  return t;
}

std::vector<int32_t> values(const Tensor& t) {
  Tensor c = Tensor::empty(t.shape(), t.dtype(), Device::cpu);
  c.copy_from(t);
  return {c.data_as<int32_t>(), c.data_as<int32_t>() + c.numel()};
}

}  // namespace

TEST(Tensor, ShapeStridesAndBytes) {
  const Tensor t = iota({2, 3, 4});
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.nbytes(), 96u);
  EXPECT_EQ(t.strides(), (std::vector<int64_t>{12, 4, 1}));
  EXPECT_EQ(t.size(-1), 4);
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_TRUE(t.owns_memory());
  EXPECT_THROW(t.size(3), Error);
}

TEST(Tensor, SliceSelectNarrowAreViews) {
  const Tensor t = iota({4, 6});
  EXPECT_EQ(values(t.slice(1, 3)), (std::vector<int32_t>{6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17}));
  EXPECT_EQ(values(t.select(3)), (std::vector<int32_t>{18, 19, 20, 21, 22, 23}));
  const Tensor cols = t.narrow(1, 2, 3);  // a strided view: rows of 3 at pitch 6
  EXPECT_FALSE(cols.is_contiguous());
  EXPECT_EQ(values(cols), (std::vector<int32_t>{2, 3, 4, 8, 9, 10, 14, 15, 16, 20, 21, 22}));
  t.slice(0, 1).data_as<int32_t>()[0] = 100;  // views share memory
  EXPECT_EQ(t.data_as<int32_t>()[0], 100);
  EXPECT_THROW(t.slice(2, 5), Error);
  EXPECT_THROW(t.narrow(1, 4, 3), Error);
}

TEST(Tensor, CopyIntoAStridedView) {
  Tensor dst = iota({3, 8});
  const Tensor src = iota({3, 2});
  dst.narrow(1, 5, 2).copy_from(src);
  EXPECT_EQ(values(dst.narrow(1, 5, 2)), values(src));
  EXPECT_EQ(dst.data_as<int32_t>()[4], 4);  // neighbours untouched
  EXPECT_EQ(dst.data_as<int32_t>()[7], 7);
}

TEST(Tensor, CopyOfASingleRowView) {
  const Tensor t = iota({1, 8});
  EXPECT_EQ(values(t.narrow(1, 2, 4)), (std::vector<int32_t>{2, 3, 4, 5}));  // [1, 4] of [1, 8]
}

TEST(Tensor, ViewAndMismatchErrorsNameTheShapes) {
  const Tensor t = iota({4, 6});
  EXPECT_EQ(t.view({6, 4}).size(0), 6);
  try {
    t.view({5, 5});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[4, 6]"), std::string::npos) << e.what();
  }
  Tensor other = Tensor::empty({4, 5}, DType::i32, Device::cpu);
  EXPECT_THROW(other.copy_from(t), Error);
  EXPECT_THROW(t.narrow(1, 1, 2).view({8}), Error);
}

TEST(Tensor, WrapDoesNotOwn) {
  int32_t raw[4] = {1, 2, 3, 4};
  const Tensor t = Tensor::wrap(raw, {2, 2}, DType::i32, Device::cpu);
  EXPECT_FALSE(t.owns_memory());
  EXPECT_EQ(values(t.select(1)), (std::vector<int32_t>{3, 4}));
}

TEST(Tensor, AsStridedViewsHeadsInsideRows) {
  const Tensor qkv = iota({2, 12});  // per token: q (2 heads x 2), k (1 x 2)... as [T, 12]
  const Tensor k = qkv.narrow(1, 4, 4).as_strided({2, 2, 2}, {12, 2, 1});
  EXPECT_EQ(values(k.select(1)), (std::vector<int32_t>{16, 17, 18, 19}));
  EXPECT_THROW(qkv.as_strided({2, 13}, {12, 1}), Error);
}
