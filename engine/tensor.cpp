#include "engine/tensor.h"

#include <cstring>
#include <sstream>

#include "engine/cuda_check.h"

namespace mxmoe {

namespace {

std::vector<int64_t> contiguous_strides(const Shape& shape) {
  std::vector<int64_t> strides(shape.size());
  int64_t s = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

int64_t checked_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    MXMOE_CHECK(d >= 0, "negative dimension in shape ", shape_str(shape));
    n *= d;
  }
  return n;
}

// The tensor as `rows` rows of `row_bytes` contiguous bytes, `pitch` bytes apart.
struct Pitched {
  int64_t rows, row_bytes, pitch;
};

bool as_pitched(const Tensor& t, Pitched& p) {
  const size_t esize = dtype_size(t.dtype());
  if (t.is_contiguous() || t.dim() == 0) {
    p = {1, int64_t(t.nbytes()), int64_t(t.nbytes())};
    return true;
  }
  // Find the largest contiguous suffix, then require the rest to collapse to one stride.
  int inner = t.dim() - 1;
  int64_t expect = 1;
  while (inner >= 0 && (t.strides()[inner] == expect || t.shape()[inner] == 1)) {
    expect *= t.shape()[inner];
    --inner;
  }
  if (inner < 0) {  // contiguous but for the strides of size-1 dimensions (e.g. [1, N] of [1, 2N])
    p = {1, int64_t(expect * esize), int64_t(expect * esize)};
    return true;
  }
  int64_t rows = t.shape()[inner];
  for (int d = inner - 1; d >= 0; --d) {
    if (t.shape()[d] == 1) continue;
    if (t.strides()[d] != t.strides()[inner] * t.shape()[inner]) return false;
    rows *= t.shape()[d];
  }
  p = {rows, int64_t(expect * esize), int64_t(t.strides()[inner] * esize)};
  return true;
}

cudaMemcpyKind copy_kind(Device dst, Device src) {
  if (dst == Device::cuda) return src == Device::cuda ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice;
  return src == Device::cuda ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost;
}

}  // namespace

std::string shape_str(const Shape& shape) {
  std::ostringstream s;
  s << '[';
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << ']';
  return s.str();
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  Tensor t;
  const int64_t n = checked_numel(shape);
  t.storage_ = std::make_shared<Allocation>(size_t(n) * dtype_size(dtype),
                                            device == Device::cuda ? MemoryKind::device : MemoryKind::host);
  t.data_ = t.storage_->data();
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  return t;
}

Tensor Tensor::empty_pinned(const Shape& shape, DType dtype) {
  Tensor t;
  t.storage_ = std::make_shared<Allocation>(size_t(checked_numel(shape)) * dtype_size(dtype), MemoryKind::pinned);
  t.data_ = t.storage_->data();
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  t.device_ = Device::cpu;
  return t;
}

Tensor Tensor::wrap(void* data, const Shape& shape, DType dtype, Device device) {
  Tensor t;
  checked_numel(shape);
  t.data_ = data;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  return t;
}

int64_t Tensor::size(int d) const {
  const int n = dim();
  MXMOE_CHECK(d >= -n && d < n, "dimension ", d, " out of range for shape ", shape_str(shape_));
  return shape_[d < 0 ? d + n : d];
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape_) n *= d;
  return n;
}

bool Tensor::is_contiguous() const { return strides_ == contiguous_strides(shape_); }

Tensor Tensor::slice(int64_t begin, int64_t end) const {
  MXMOE_CHECK(dim() >= 1 && 0 <= begin && begin <= end && end <= shape_[0], "slice [", begin, ", ", end,
              ") out of range for shape ", shape_str(shape_));
  return narrow(0, begin, end - begin);
}

Tensor Tensor::select(int64_t index) const {
  Tensor t = slice(index, index + 1);
  t.shape_.erase(t.shape_.begin());
  t.strides_.erase(t.strides_.begin());
  return t;
}

Tensor Tensor::narrow(int d, int64_t begin, int64_t length) const {
  MXMOE_CHECK(d >= 0 && d < dim() && begin >= 0 && length >= 0 && begin + length <= shape_[d], "narrow(dim ", d,
              ", ", begin, ", ", length, ") out of range for shape ", shape_str(shape_));
  Tensor t = *this;
  t.data_ = static_cast<char*>(data_) + begin * strides_[d] * int64_t(dtype_size(dtype_));
  t.shape_[d] = length;
  return t;
}

Tensor Tensor::view(const Shape& shape) const {
  MXMOE_CHECK(is_contiguous(), "view of a non-contiguous tensor ", shape_str(shape_));
  MXMOE_CHECK(checked_numel(shape) == numel(), "cannot view ", shape_str(shape_), " as ", shape_str(shape));
  Tensor t = *this;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  return t;
}

Tensor Tensor::as_strided(const Shape& shape, const std::vector<int64_t>& strides) const {
  MXMOE_CHECK(shape.size() == strides.size(), "as_strided: shape ", shape_str(shape), " with ", strides.size(),
              " strides");
  int64_t last = 0;  // offset of the last element, which must lie inside this tensor's extent
  for (size_t d = 0; d < shape.size(); ++d) {
    MXMOE_CHECK(shape[d] >= 0 && strides[d] >= 0, "as_strided: negative size or stride");
    if (shape[d] == 0) last = -1;
    if (last >= 0) last += (shape[d] - 1) * strides[d];
  }
  int64_t extent = 0;
  for (int d = 0; d < dim(); ++d) extent += (shape_[d] - 1) * strides_[d];
  MXMOE_CHECK(last <= extent, "as_strided: ", shape_str(shape), " reaches past the tensor ", shape_str(shape_));
  Tensor t = *this;
  t.shape_ = shape;
  t.strides_ = strides;
  return t;
}

void Tensor::copy_from(const Tensor& src, cudaStream_t stream) {
  MXMOE_CHECK(src.shape_ == shape_ && src.dtype_ == dtype_, "copy of ", shape_str(src.shape_), " ",
              dtype_name(src.dtype_), " into ", shape_str(shape_), " ", dtype_name(dtype_));
  if (numel() == 0) return;
  Pitched s{}, d{};
  MXMOE_CHECK(as_pitched(src, s) && as_pitched(*this, d),
              "copy needs contiguous or 2-D pitched tensors, shape ", shape_str(shape_));
  // Same bytes in a different row split (e.g. contiguous -> pitched): split both on the finer rows.
  if (s.rows != d.rows) {
    const bool src_finer = s.rows > d.rows;
    Pitched& coarse = src_finer ? d : s;
    const Pitched& fine = src_finer ? s : d;
    MXMOE_CHECK(coarse.rows == 1, "copy between incompatible layouts, shape ", shape_str(shape_));
    coarse = {fine.rows, fine.row_bytes, fine.row_bytes};
  }
  const cudaMemcpyKind kind = copy_kind(device_, src.device_);
  if (kind == cudaMemcpyHostToHost && stream == nullptr) {
    for (int64_t r = 0; r < d.rows; ++r)
      std::memcpy(static_cast<char*>(data_) + r * d.pitch, static_cast<const char*>(src.data_) + r * s.pitch,
                  size_t(d.row_bytes));
    return;
  }
  CUDA_CHECK(cudaMemcpy2DAsync(data_, size_t(d.pitch), src.data_, size_t(s.pitch), size_t(d.row_bytes),
                               size_t(d.rows), kind, stream));
}

Tensor Tensor::to(Device device, cudaStream_t stream) const {
  Tensor out = empty(shape_, dtype_, device);
  out.copy_from(*this, stream);
  if (device_ == Device::cuda || device == Device::cuda) CUDA_CHECK(cudaStreamSynchronize(stream));
  return out;
}

}  // namespace mxmoe
