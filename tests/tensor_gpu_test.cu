// Device copies (contiguous and strided), and the per-GPU memory accounting and cap.
#include <gtest/gtest.h>

#include <numeric>

#include "engine/error.h"
#include "engine/tensor.h"
#include "test_util.h"

using namespace mxmoe;

TEST(TensorGpu, RoundTripThroughTheDevice) {
  MXMOE_REQUIRE_GPU();
  Tensor h = Tensor::empty({5, 7}, DType::i32, Device::cpu);
  std::iota(h.data_as<int32_t>(), h.data_as<int32_t>() + h.numel(), 3);
  const Tensor d = h.to(Device::cuda);
  Tensor cols = Tensor::empty({5, 3}, DType::i32, Device::cuda);
  cols.copy_from(d.narrow(1, 2, 3));  // strided device -> contiguous device
  const Tensor back = cols.to(Device::cpu);
  for (int r = 0; r < 5; ++r)
    for (int c = 0; c < 3; ++c) ASSERT_EQ(back.data_as<int32_t>()[r * 3 + c], h.data_as<int32_t>()[r * 7 + 2 + c]);
}

TEST(TensorGpu, MemoryAccountingAndCap) {
  MXMOE_REQUIRE_GPU();
  const int dev = current_device();
  const size_t before = device_memory_stats(dev).in_use;
  reset_device_memory_peak(dev);
  {
    const Tensor a = Tensor::empty({1 << 20}, DType::f32, Device::cuda);
    EXPECT_EQ(device_memory_stats(dev).in_use, before + (4u << 20));
  }
  EXPECT_EQ(device_memory_stats(dev).in_use, before);
  EXPECT_EQ(device_memory_stats(dev).peak, before + (4u << 20));

  set_device_memory_limit(dev, before + (8u << 20));
  const Tensor fits = Tensor::empty({1 << 20}, DType::f32, Device::cuda);
  try {
    Tensor::empty({2 << 20}, DType::f32, Device::cuda);
    FAIL() << "allocation past the cap succeeded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("GPU memory limit exceeded"), std::string::npos) << e.what();
  }
  EXPECT_EQ(device_memory_stats(dev).in_use, before + (4u << 20));  // the refused allocation left no trace
  set_device_memory_limit(dev, 0);
}
