// Host side of the W8A16 / bf16 tensor-core GEMMs: argument checks, tile choice, launch. The
// kernels: kernels/w8a16_gemm_rs.cuh (MXFP8: TMA pipeline + register-A wgmma, the default)
// and kernels/w8a16_gemm_kernel.cuh (bf16 weights; MXFP8 kept as a measured comparison).
#include "kernels/w8a16_gemm.h"

#include "engine/cuda_check.h"
#include "engine/gpu_info.h"
#include "kernels/smem_limit.h"
#include "kernels/w8a16_gemm_kernel.cuh"
#include "kernels/w8a16_gemm_tensor_map.h"
#include "kernels/w8a16_gemm_tile.cuh"
#include "kernels/w8a16_gemm_rs.cuh"

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

// MXFP8: the TMA / register-A kernel. Measured on H100 (bench-gemm, two runs on fresh machines):
// 256-token tiles beat 128-token tiles on every model shape, dense and grouped (Qwen3-30B-A3B MoE
// too, ~256 rows per expert), by 1.2-1.7x even where 128-token tiles fill the waves better: they
// halve the dequant work and the x traffic per flop. CTA pairs sharing x by multicast ran at
// 0.65-0.95x of unpaired tiles (a run on a busy machine had them ahead): not chosen. 128-token
// tiles only when one tile covers all rows.
GemmTile pick_fp8(int64_t m) { return m <= 128 ? GemmTile::rs_t128 : GemmTile::rs_t256; }
// bf16 weights (the cp.async kernel), measured on H100 (bench-gemm): 256 x 128 tiles with 4
// warpgroups when there are many rows per group, else 128 x 128 tiles with two CTAs per SM.
GemmTile pick_grouped_bf16(int64_t m, int64_t groups) {
  return m >= 512 * groups ? GemmTile::m256_4wg : GemmTile::n128_2cta;
}

// CTAs for BM x BN tiles: dense, exactly the tiles; grouped, every group adds at most one
// partial m-tile, so M/BM + G m-tiles bound the count (the extra CTAs exit at once).
unsigned grid_size(GemmArgs& a, int bm, int bn) {
  a.n_tiles = (a.N + bn - 1) / bn;
  const int64_t m_tiles = a.offsets ? a.M / bm + a.G : (a.M + bm - 1) / bm;
  const int64_t grid = m_tiles * a.n_tiles;
  MXMOE_CHECK(grid < (int64_t(1) << 31), "GEMM grid too large: ", grid, " CTAs");
  return unsigned(grid);
}

template <int BM, int BN, bool kFp8, int kCtas, int kWG>
void launch(GemmArgs a, cudaStream_t stream) {
  using T = w8a16::Tile<BM, BN, kFp8, kCtas, kWG>;
  allow_dynamic_smem<w8a16::gemm_kernel<BM, BN, kFp8, kCtas, kWG>>(T::smem_bytes);
  constexpr int max_groups = w8a16::max_groups<T>();
  MXMOE_CHECK(a.G <= max_groups, "grouped GEMM: ", a.G, " groups, at most ", max_groups, " supported");
  const unsigned grid = grid_size(a, BM, BN);
  w8a16::gemm_kernel<BM, BN, kFp8, kCtas, kWG><<<grid, T::threads, T::smem_bytes, stream>>>(a);
  CUDA_CHECK_LAUNCH();
}

// The TMA / register-A kernel: tensor maps over x [M, K] and W seen as [G*N, K]; paired CTAs
// launch as clusters of 2. Gated tiles load W in two 64-row boxes (gate and up rows).
template <int kBT, bool kPair, bool kFitTokens, bool kGated = false>
void launch_rs_kernel(const GemmArgs& g, cudaStream_t stream) {
  using T = w8a16::RsTile<kBT, kPair>;
  constexpr auto kernel = w8a16::rs_gemm_kernel<kBT, kPair, kFitTokens, kGated>;
  allow_dynamic_smem<kernel>(T::smem_bytes);
  // find_tile keeps the G+1 offsets in the (not yet used) stage buffers.
  MXMOE_CHECK(int64_t(g.G) * 4 + 4 <= int64_t(T::stages) * T::stage_bytes, "grouped GEMM: ", g.G, " groups, too many");
  w8a16::RsArgs args{};
  const uint64_t k = uint64_t(g.K);
  // x boxes: the tile (half of it for each CTA of a pair); grouped tiles with fewer rows load the
  // 64-token blocks they have rows in.
  const auto x_map = [&](int box_rows) {
    return w8a16::make_tensor_map({g.x, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, k, uint64_t(g.M), 2 * k, w8a16::kBK,
                                   uint32_t(box_rows), CU_TENSOR_MAP_SWIZZLE_128B});
  };
  args.x_map = x_map(kBT / T::cluster);
  if constexpr (kFitTokens) args.x_blocks_map = x_map(64);
  args.w_map = w8a16::make_tensor_map({g.w, CU_TENSOR_MAP_DATA_TYPE_UINT8, k, uint64_t(g.G) * uint64_t(g.N), k,
                                       w8a16::kBK, uint32_t(kGated ? T::BW / 2 : T::BW), CU_TENSOR_MAP_SWIZZLE_64B});
  args.g = g;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(grid_size(args.g, kBT, T::BW * T::cluster) * T::cluster);
  config.blockDim = dim3(T::threads);
  config.dynamicSmemBytes = T::smem_bytes;
  config.stream = stream;
  cudaLaunchAttribute cluster{};
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim.x = T::cluster;
  cluster.val.clusterDim.y = 1;
  cluster.val.clusterDim.z = 1;
  config.attrs = &cluster;
  config.numAttrs = 1;
  CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, args));
}

// Grouped GEMMs fit a tile's width to its rows (see rs_gemm_kernel); pairs share full tiles.
template <int kBT, bool kPair>
void launch_rs(const GemmArgs& g, cudaStream_t stream) {
  if constexpr (kPair) launch_rs_kernel<kBT, true, false>(g, stream);
  else if (g.offsets) launch_rs_kernel<kBT, false, true>(g, stream);
  else launch_rs_kernel<kBT, false, false>(g, stream);
}

template <bool kFp8>
void dispatch(const GemmArgs& a, GemmTile tile, cudaStream_t stream) {
  switch (tile) {
    case GemmTile::rs_t256_pair:
    case GemmTile::rs_t256:
    case GemmTile::rs_t128:
      MXMOE_CHECK(kFp8, "GEMM tiles rs_* need MXFP8 weights (bf16 weights: m256_4wg or n128_2cta)");
      if (tile == GemmTile::rs_t256_pair) launch_rs<256, true>(a, stream);
      else if (tile == GemmTile::rs_t256) launch_rs<256, false>(a, stream);
      else launch_rs<128, false>(a, stream);
      break;
    case GemmTile::m256_4wg: launch<256, 128, kFp8, 1, 4>(a, stream); break;
    default: launch<128, 128, kFp8, 2, 2>(a, stream); break;
  }
}

template <bool kFp8>
void grouped(GemmArgs a, const Tensor& offsets, int64_t groups, GemmTile tile, cudaStream_t stream) {
  a.offsets = offsets.data_as<const int>();
  a.G = int(groups);
  if (a.M == 0 || groups == 0) return;
  if (tile == GemmTile::automatic) tile = kFp8 ? pick_fp8(a.M) : pick_grouped_bf16(a.M, groups);
  dispatch<kFp8>(a, tile, stream);
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
  dispatch<true>(a, tile == GemmTile::automatic ? pick_fp8(a.M) : tile, stream);
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

void w8a16_grouped_gemm_silu_mul(const Tensor& x, const MxTensor& w13, const Tensor& offsets, const Tensor& act,
                                 cudaStream_t stream, GemmTile tile) {
  const char* op = "w8a16_grouped_gemm_silu_mul";
  check_weight(w13, 3, op);
  const int64_t groups = w13.elems.size(0), rows = w13.elems.size(1);
  MXMOE_CHECK(rows % 2 == 0, op, ": w13 has ", rows, " rows per group, not 2·I (gate rows, then up rows)");
  check_offsets(offsets, groups, op);
  GemmArgs a = common_args(x, act, rows / 2, w13.elems.size(2), op);
  a.N = int(rows);  // W rows per group; act has N / 2 columns
  a.w = w13.elems.data();
  a.scales = w13.scales.data_as<const uint8_t>();
  a.offsets = offsets.data_as<const int>();
  a.G = int(groups);
  if (a.M == 0 || groups == 0) return;
  if (tile == GemmTile::automatic) tile = pick_fp8(a.M);
  MXMOE_CHECK(tile == GemmTile::rs_t256 || tile == GemmTile::rs_t128, op,
              ": the gated form runs on rs_t256 or rs_t128 tiles");
  if (tile == GemmTile::rs_t256) launch_rs_kernel<256, false, true, true>(a, stream);
  else launch_rs_kernel<128, false, true, true>(a, stream);
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
void w8a16_grouped_gemm_silu_mul(const Tensor& x, const MxTensor& w13, const Tensor& offsets, const Tensor& act,
                                 cudaStream_t stream) {
  w8a16_grouped_gemm_silu_mul(x, w13, offsets, act, stream, GemmTile::automatic);
}

}  // namespace mxmoe
