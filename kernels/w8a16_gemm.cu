// Host side of the W8A16 / bf16 tensor-core GEMMs: argument checks, tile-width choice, launch.
// The kernel is kernels/w8a16_gemm_kernel.cuh.
#include "kernels/w8a16_gemm.h"

#include <array>
#include <mutex>

#include "engine/cuda_check.h"
#include "engine/gpu_info.h"
#include "kernels/w8a16_gemm_kernel.cuh"
#include "kernels/w8a16_gemm_tile.cuh"

namespace mxmoe {
namespace {

using w8a16::GemmArgs;

void check_activation(const Tensor& t, const char* what, const char* op) {
  MXMOE_CHECK(t.device() == Device::cuda && t.dtype() == DType::bf16 && t.dim() == 2 && t.is_contiguous(), op, ": ",
              what, " must be a contiguous 2-D bf16 CUDA tensor, got ", dtype_name(t.dtype()), " ",
              shape_str(t.shape()));
}

// Checks x [M, K] and y [M, N] and fills the shared arguments.
GemmArgs common_args(const Tensor& x, const Tensor& y, int64_t n, int64_t k, const char* op) {
  check_activation(x, "x", op);
  check_activation(y, "y", op);
  MXMOE_CHECK(k % kMxBlock == 0 && k > 0, op, ": K = ", k, " must be a positive multiple of ", kMxBlock);
  MXMOE_CHECK(x.size(1) == k && y.size(0) == x.size(0) && y.size(1) == n, op, ": x ", shape_str(x.shape()), " y ",
              shape_str(y.shape()), " do not match W [", n, ", ", k, "]");
  MXMOE_CHECK(x.size(0) < (int64_t(1) << 31) && n < (int64_t(1) << 31) && k < (int64_t(1) << 31), op,
              ": sizes must fit in int32");
  const GpuInfo& gpu = gpu_info();
  MXMOE_CHECK(gpu.major == 9, op, ": the wgmma kernel needs an sm_90 GPU (Hopper), this one is sm_", gpu.major,
              gpu.minor);
  GemmArgs a{};
  a.x = x.data_as<const __nv_bfloat16>();
  a.y = y.data_as<__nv_bfloat16>();
  a.M = int(x.size(0));
  a.N = int(n);
  a.K = int(k);
  a.G = 1;
  return a;
}

void check_weight(const MxTensor& w, int groups, const char* op) {
  const Tensor& e = w.elems;
  MXMOE_CHECK(e.device() == Device::cuda && e.dtype() == DType::e4m3 && e.dim() == groups && e.is_contiguous(), op,
              ": W elements must be a contiguous ", groups, "-D e4m3 CUDA tensor, got ", dtype_name(e.dtype()), " ",
              shape_str(e.shape()));
  Shape scales = e.shape();
  scales.back() /= kMxBlock;
  MXMOE_CHECK(w.scales.device() == Device::cuda && w.scales.dtype() == DType::e8m0 && w.scales.shape() == scales &&
                  w.scales.is_contiguous(),
              op, ": W scales must be contiguous e8m0 ", shape_str(scales), ", got ", dtype_name(w.scales.dtype()),
              " ", shape_str(w.scales.shape()));
}

void check_offsets(const Tensor& offsets, int64_t groups, const char* op) {
  MXMOE_CHECK(offsets.device() == Device::cuda && offsets.dtype() == DType::i32 && offsets.dim() == 1 &&
                  offsets.size(0) == groups + 1 && offsets.is_contiguous(),
              op, ": offsets must be a contiguous i32 CUDA tensor [", groups + 1, "], got ", dtype_name(offsets.dtype()),
              " ", shape_str(offsets.shape()));
}

// Fraction of the SMs busy over all waves when `tiles` CTAs run one per SM.
double wave_efficiency(int64_t tiles, int sms) {
  const int64_t waves = (tiles + sms - 1) / sms;
  return waves == 0 ? 1.0 : double(tiles) / double(waves * sms);
}

// Measured on H100 (bench-gemm): 256 x 128 tiles with 4 warpgroups are fastest when their waves
// fill the SMs (half the dequant work per flop of 128-row tiles, and 4 warps per scheduler to
// hide latency); otherwise, and for grouped GEMMs with small groups (partial m-tiles), 128 x 128
// tiles with two CTAs per SM.
GemmTile pick_dense(GemmTile tile, int64_t m, int64_t n, int sms) {
  if (tile != GemmTile::automatic) return tile;
  const int64_t tiles = (m + 255) / 256 * ((n + 127) / 128);
  return wave_efficiency(tiles, sms) >= 0.85 ? GemmTile::m256_4wg : GemmTile::n128_2cta;
}
GemmTile pick_grouped(GemmTile tile, int64_t m, int64_t groups) {
  if (tile != GemmTile::automatic) return tile;
  return m >= 512 * groups ? GemmTile::m256_4wg : GemmTile::n128_2cta;
}

// Grid: dense, exactly the tiles; grouped, every group adds at most one partial m-tile, so
// M/BM + G m-tiles bound the count (the extra CTAs exit at once).
template <int BM, int BN, bool kFp8, int kCtas, int kWG>
void launch(GemmArgs a, cudaStream_t stream) {
  using T = w8a16::Tile<BM, BN, kFp8, kCtas, kWG>;
  constexpr int smem = T::smem_bytes;
  static std::array<std::once_flag, 64> once;
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  std::call_once(once[size_t(device) % once.size()], [] {
    CUDA_CHECK(cudaFuncSetAttribute(w8a16::gemm_kernel<BM, BN, kFp8, kCtas, kWG>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  });
  constexpr int max_groups = w8a16::max_groups<T>();
  MXMOE_CHECK(a.G <= max_groups, "grouped GEMM: ", a.G, " groups, at most ", max_groups, " supported");
  a.n_tiles = (a.N + BN - 1) / BN;
  const int64_t m_tiles = a.offsets ? a.M / BM + a.G : (a.M + BM - 1) / BM;
  const int64_t grid = m_tiles * a.n_tiles;
  MXMOE_CHECK(grid < (int64_t(1) << 31), "GEMM grid too large: ", grid, " CTAs");
  w8a16::gemm_kernel<BM, BN, kFp8, kCtas, kWG><<<unsigned(grid), T::threads, smem, stream>>>(a);
  CUDA_CHECK_LAUNCH();
}

template <bool kFp8>
void dispatch(const GemmArgs& a, GemmTile tile, cudaStream_t stream) {
  switch (tile) {
    case GemmTile::m256_4wg: launch<256, 128, kFp8, 1, 4>(a, stream); break;
    default: launch<128, 128, kFp8, 2, 2>(a, stream); break;
  }
}

template <bool kFp8>
void grouped(GemmArgs a, const Tensor& offsets, int64_t groups, GemmTile tile, cudaStream_t stream) {
  a.offsets = offsets.data_as<const int>();
  a.G = int(groups);
  if (a.M == 0 || groups == 0) return;
  dispatch<kFp8>(a, pick_grouped(tile, a.M, groups), stream);
}

}  // namespace

void w8a16_gemm(const Tensor& x, const MxTensor& w, const Tensor* bias, const Tensor& y, cudaStream_t stream,
                GemmTile tile) {
  const char* op = "w8a16_gemm";
  check_weight(w, 2, op);
  GemmArgs a = common_args(x, y, w.elems.size(0), w.elems.size(1), op);
  a.w = w.elems.data();
  a.scales = w.scales.data_as<const uint8_t>();
  if (bias) {
    MXMOE_CHECK(bias->device() == Device::cuda && bias->dtype() == DType::bf16 && bias->numel() == a.N &&
                    bias->is_contiguous(),
                op, ": bias must be a contiguous bf16 CUDA tensor of ", a.N, " elements, got ",
                dtype_name(bias->dtype()), " ", shape_str(bias->shape()));
    a.bias = bias->data_as<const __nv_bfloat16>();
  }
  if (a.M == 0) return;
  dispatch<true>(a, pick_dense(tile, a.M, a.N, gpu_info().sm_count), stream);
}

void w8a16_grouped_gemm(const Tensor& x, const MxTensor& w, const Tensor& offsets, const Tensor& y,
                        cudaStream_t stream, GemmTile tile) {
  const char* op = "w8a16_grouped_gemm";
  check_weight(w, 3, op);
  const int64_t groups = w.elems.size(0);
  check_offsets(offsets, groups, op);
  GemmArgs a = common_args(x, y, w.elems.size(1), w.elems.size(2), op);
  a.w = w.elems.data();
  a.scales = w.scales.data_as<const uint8_t>();
  grouped<true>(a, offsets, groups, tile, stream);
}

void bf16_grouped_gemm(const Tensor& x, const Tensor& w, const Tensor& offsets, const Tensor& y, cudaStream_t stream,
                       GemmTile tile) {
  const char* op = "bf16_grouped_gemm";
  MXMOE_CHECK(w.device() == Device::cuda && w.dtype() == DType::bf16 && w.dim() == 3 && w.is_contiguous(), op,
              ": W must be a contiguous 3-D bf16 CUDA tensor, got ", dtype_name(w.dtype()), " ", shape_str(w.shape()));
  const int64_t groups = w.size(0);
  check_offsets(offsets, groups, op);
  GemmArgs a = common_args(x, y, w.size(1), w.size(2), op);
  a.w = w.data();
  grouped<false>(a, offsets, groups, tile, stream);
}

void w8a16_gemm(const Tensor& x, const MxTensor& w, const Tensor* bias, const Tensor& y, cudaStream_t stream) {
  w8a16_gemm(x, w, bias, y, stream, GemmTile::automatic);
}
void w8a16_grouped_gemm(const Tensor& x, const MxTensor& w, const Tensor& offsets, const Tensor& y,
                        cudaStream_t stream) {
  w8a16_grouped_gemm(x, w, offsets, y, stream, GemmTile::automatic);
}
void bf16_grouped_gemm(const Tensor& x, const Tensor& w, const Tensor& offsets, const Tensor& y, cudaStream_t stream) {
  bf16_grouped_gemm(x, w, offsets, y, stream, GemmTile::automatic);
}

}  // namespace mxmoe
