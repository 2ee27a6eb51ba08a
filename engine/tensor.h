#pragma once
// Tensor: shape + strides (in elements) + dtype + device over a shared Allocation (owning) or
// over memory someone else owns (a view: wrap(), slice(), narrow(), view()). Views keep the
// owning Allocation alive when they come from an owning tensor.
#include <cuda_runtime.h>

#include <memory>
#include <string>
#include <vector>

#include "engine/dtype.h"
#include "engine/memory.h"

namespace mxmoe {

enum class Device : uint8_t { cpu, cuda };
using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& shape);  // "[4, 32]"

class Tensor {
 public:
  Tensor() = default;

  static Tensor empty(const Shape& shape, DType dtype, Device device);
  static Tensor empty_pinned(const Shape& shape, DType dtype);  // page-locked host memory
  static Tensor wrap(void* data, const Shape& shape, DType dtype, Device device);

  bool defined() const { return data_ != nullptr || numel() == 0; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const Shape& shape() const { return shape_; }
  const std::vector<int64_t>& strides() const { return strides_; }
  int dim() const { return int(shape_.size()); }
  int64_t size(int d) const;  // negative d counts from the end
  int64_t numel() const;
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const;
  bool owns_memory() const { return storage_ != nullptr; }

  void* data() const { return data_; }
  template <class T> T* data_as() const { return static_cast<T*>(data_); }

  Tensor slice(int64_t begin, int64_t end) const;                  // rows [begin, end) of dim 0
  Tensor select(int64_t index) const;                              // drops dim 0
  Tensor narrow(int d, int64_t begin, int64_t length) const;       // strided view along dim d
  Tensor view(const Shape& shape) const;                           // reshape of a contiguous tensor
  // A view with explicit strides (elements) over the same memory, e.g. [T, heads, head_dim] heads
  // inside a fused QKV row; the caller keeps it within this tensor's extent.
  Tensor as_strided(const Shape& shape, const std::vector<int64_t>& strides) const;

  // Copies src into this tensor (same shape and dtype; any devices). Both sides must be
  // contiguous, or 2-D pitched: rows of contiguous bytes at a fixed stride.
  void copy_from(const Tensor& src, cudaStream_t stream = nullptr);
  Tensor to(Device device, cudaStream_t stream = nullptr) const;  // contiguous copy; synchronous

 private:
  std::shared_ptr<Allocation> storage_;
  void* data_ = nullptr;
  Shape shape_;
  std::vector<int64_t> strides_;
  DType dtype_ = DType::f32;
  Device device_ = Device::cpu;
};

}  // namespace mxmoe
