#include "kernels/cublaslt_gemm.h"

#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include "engine/cuda_check.h"
#include "engine/error.h"
#include "engine/memory.h"

namespace mxmoe {

namespace {

#define LT_CHECK(call)                                                                               \
  do {                                                                                               \
    const cublasStatus_t lt_status_ = (call);                                                        \
    if (lt_status_ != CUBLAS_STATUS_SUCCESS) fail(#call, " failed: ", cublasLtGetStatusName(lt_status_)); \
  } while (0)

constexpr size_t kWorkspaceBytes = size_t(32) << 20;

template <class T>
void set_attr(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const T& value) {
  LT_CHECK(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof(value)));
}

cudaDataType_t input_type(LtGemmType t) {
  return t == LtGemmType::mxfp8 || t == LtGemmType::fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
}
cudaDataType_t output_type(LtGemmType t) { return t == LtGemmType::bf16_f32 ? CUDA_R_32F : CUDA_R_16BF; }

using PlanKey = std::tuple<int64_t, int64_t, int64_t, LtGemmType, bool, int>;

PlanKey key_of(const LtGemmShape& s) { return {s.m, s.n, s.k, s.type, s.bias, s.alignment}; }

struct Plan {
  explicit Plan(const LtGemmShape& shape) : desc(shape) {}
  LtGemmDesc desc;
  cublasLtMatmulAlgo_t algo{};
  std::string refusal;  // empty: algo is valid
};

struct DeviceContext {
  std::mutex mutex;
  cublasLtHandle_t handle = nullptr;
  Tensor workspace;  // [kWorkspaceBytes] u8
  std::map<PlanKey, std::unique_ptr<Plan>> plans;

  DeviceContext() {
    LT_CHECK(cublasLtCreate(&handle));
    workspace = Tensor::empty({int64_t(kWorkspaceBytes)}, DType::u8, Device::cuda);
  }
  ~DeviceContext() { cublasLtDestroy(handle); }

  // Caller holds `mutex`.
  Plan& plan(const LtGemmShape& shape) {
    std::unique_ptr<Plan>& slot = plans[key_of(shape)];
    if (slot) return *slot;
    slot = std::make_unique<Plan>(shape);
    cublasLtMatmulPreference_t pref = nullptr;
    LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t ws = kWorkspaceBytes;
    const uint32_t align = uint32_t(shape.alignment);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
      cublasLtMatmulPreferenceSetAttribute(pref, attr, &align, sizeof(align));
    cublasLtMatmulHeuristicResult_t result{};
    int count = 0;
    const LtGemmDesc& d = slot->desc;
    if (shape.type == LtGemmType::mxfp8) {
      // The heuristic rejects block scaling without scale pointers (CUBLAS_STATUS_INVALID_VALUE,
      // "requires a custom pointer for A scale"): give it device addresses, replaced at each call.
      set_attr(d.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, workspace.data());
      set_attr(d.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, workspace.data());
    }
    const cublasStatus_t status =
        cublasLtMatmulAlgoGetHeuristic(handle, d.op, d.a, d.b, d.d, d.d, pref, 1, &result, &count);
    cublasLtMatmulPreferenceDestroy(pref);
    if (status != CUBLAS_STATUS_SUCCESS)
      slot->refusal = cat("cublasLtMatmulAlgoGetHeuristic: ", cublasLtGetStatusName(status));
    else if (count == 0)
      slot->refusal = "cublasLtMatmulAlgoGetHeuristic: no algorithm";
    else
      slot->algo = result.algo;
    return *slot;
  }
};

DeviceContext& context() {
  static std::mutex mutex;
  static std::map<int, std::unique_ptr<DeviceContext>> contexts;
  const int device = current_device();
  std::lock_guard<std::mutex> lock(mutex);
  std::unique_ptr<DeviceContext>& c = contexts[device];
  if (!c) c = std::make_unique<DeviceContext>();
  return *c;
}

void run(const LtGemmShape& shape, const void* a, const void* b, void* d, const void* bias, const void* a_scale,
         const void* b_scale, cudaStream_t stream) {
  DeviceContext& ctx = context();
  std::lock_guard<std::mutex> lock(ctx.mutex);
  Plan& plan = ctx.plan(shape);
  MXMOE_CHECK(plan.refusal.empty(), "cuBLASLt GEMM M=", shape.m, " N=", shape.n, " K=", shape.k,
              " not supported on this GPU: ", plan.refusal);
  const LtGemmDesc& desc = plan.desc;
  if (bias) set_attr(desc.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
  if (a_scale) {
    set_attr(desc.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, a_scale);
    set_attr(desc.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, b_scale);
  }
  const float alpha = 1.f, beta = 0.f;
  LT_CHECK(cublasLtMatmul(ctx.handle, desc.op, &alpha, a, desc.a, b, desc.b, &beta, d, desc.d, d, desc.d, &plan.algo,
                          ctx.workspace.data(), kWorkspaceBytes, stream));
}

int operands_alignment(std::initializer_list<const void*> pointers) {
  int align = 256;
  for (const void* p : pointers)
    if (p) align = std::min(align, pointer_alignment(p));
  return align;
}

void check_2d(const Tensor& t, DType dtype, const char* what, const char* op) {
  MXMOE_CHECK(t.dim() == 2 && t.dtype() == dtype && t.is_contiguous() && t.device() == Device::cuda, op, ": ", what,
              " must be a contiguous 2-D CUDA ", dtype_name(dtype), " tensor, got ", shape_str(t.shape()), " ",
              dtype_name(t.dtype()));
}

void check_bias(const Tensor* bias, int64_t n, const char* op) {
  if (!bias) return;
  MXMOE_CHECK(bias->dtype() == DType::bf16 && bias->numel() == n && bias->is_contiguous() &&
                  bias->device() == Device::cuda,
              op, ": bias must be a contiguous CUDA bf16 [", n, "], got ", shape_str(bias->shape()), " ",
              dtype_name(bias->dtype()));
}

}  // namespace

LtGemmDesc::LtGemmDesc(const LtGemmShape& s) {
  LT_CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  set_attr(op, CUBLASLT_MATMUL_DESC_TRANSA, CUBLAS_OP_T);
  set_attr(op, CUBLASLT_MATMUL_DESC_TRANSB, CUBLAS_OP_N);
  if (s.bias) set_attr(op, CUBLASLT_MATMUL_DESC_EPILOGUE, CUBLASLT_EPILOGUE_BIAS);  // bias type = D type (bf16)
  if (s.type == LtGemmType::mxfp8) {
    const int32_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_VEC32_UE8M0;
    set_attr(op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, mode);
    set_attr(op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, mode);
  }
  if (s.type == LtGemmType::fp8) set_attr(op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, int8_t(1));  // the fastest form
  const cudaDataType_t in = input_type(s.type), out = output_type(s.type);
  LT_CHECK(cublasLtMatrixLayoutCreate(&a, in, uint64_t(s.k), uint64_t(s.n), s.k));
  LT_CHECK(cublasLtMatrixLayoutCreate(&b, in, uint64_t(s.k), uint64_t(s.m), s.k));
  LT_CHECK(cublasLtMatrixLayoutCreate(&d, out, uint64_t(s.n), uint64_t(s.m), s.n));
}

LtGemmDesc::~LtGemmDesc() {
  if (d) cublasLtMatrixLayoutDestroy(d);
  if (b) cublasLtMatrixLayoutDestroy(b);
  if (a) cublasLtMatrixLayoutDestroy(a);
  if (op) cublasLtMatmulDescDestroy(op);
}

int pointer_alignment(const void* p) {
  const auto v = reinterpret_cast<uintptr_t>(p);
  int align = 1;
  while (align < 256 && v % uintptr_t(align * 2) == 0) align *= 2;
  return align;
}

std::string cublaslt_probe(const LtGemmShape& shape) {
  DeviceContext& ctx = context();
  std::lock_guard<std::mutex> lock(ctx.mutex);
  return ctx.plan(shape).refusal;
}

void cublaslt_gemm_bf16(const Tensor& x, const Tensor& w, const Tensor* bias, const Tensor& y, cudaStream_t stream) {
  const char* op = "cublaslt_gemm_bf16";
  check_2d(x, DType::bf16, "x", op);
  check_2d(w, DType::bf16, "W", op);
  MXMOE_CHECK(y.dim() == 2 && (y.dtype() == DType::bf16 || y.dtype() == DType::f32) && y.is_contiguous() &&
                  y.device() == Device::cuda,
              op, ": y must be a contiguous 2-D CUDA bf16 or f32 tensor, got ", shape_str(y.shape()));
  const int64_t m = x.size(0), k = x.size(1), n = w.size(0);
  MXMOE_CHECK(w.size(1) == k && y.size(0) == m && y.size(1) == n, op, ": x ", shape_str(x.shape()), " W ",
              shape_str(w.shape()), " y ", shape_str(y.shape()));
  MXMOE_CHECK(!(bias && y.dtype() == DType::f32), op, ": a bias needs a bf16 output");
  check_bias(bias, n, op);
  if (m == 0 || n == 0) return;
  const LtGemmShape shape{m, n, k, y.dtype() == DType::f32 ? LtGemmType::bf16_f32 : LtGemmType::bf16, bias != nullptr,
                          operands_alignment({x.data(), w.data(), y.data(), bias ? bias->data() : nullptr})};
  run(shape, w.data(), x.data(), y.data(), bias ? bias->data() : nullptr, nullptr, nullptr, stream);
}

void cublaslt_gemm_mxfp8(const MxTensor& x, const MxTensor& w, const Tensor* bias, const Tensor& y,
                         cudaStream_t stream) {
  const char* op = "cublaslt_gemm_mxfp8";
  check_2d(x.elems, DType::e4m3, "x", op);
  check_2d(w.elems, DType::e4m3, "W", op);
  check_2d(y, DType::bf16, "y", op);
  const int64_t m = x.elems.size(0), k = x.elems.size(1), n = w.elems.size(0);
  MXMOE_CHECK(w.elems.size(1) == k && y.size(0) == m && y.size(1) == n && k % kMxBlock == 0, op, ": x ",
              shape_str(x.elems.shape()), " W ", shape_str(w.elems.shape()), " y ", shape_str(y.shape()));
  MXMOE_CHECK(x.scales.numel() == swizzled_scales_shape({m, k / kMxBlock})[0] &&
                  w.scales.numel() == swizzled_scales_shape({n, k / kMxBlock})[0] &&
                  x.scales.dtype() == DType::e8m0 && w.scales.dtype() == DType::e8m0,
              op, ": scales must be e8m0 in the tiled layout, got ", shape_str(x.scales.shape()), " and ",
              shape_str(w.scales.shape()));
  check_bias(bias, n, op);
  if (m == 0 || n == 0) return;
  const LtGemmShape shape{m, n, k, LtGemmType::mxfp8, bias != nullptr,
                          operands_alignment({x.elems.data(), w.elems.data(), y.data(), bias ? bias->data() : nullptr})};
  run(shape, w.elems.data(), x.elems.data(), y.data(), bias ? bias->data() : nullptr, w.scales.data(),
      x.scales.data(), stream);
}

void cublaslt_gemm_fp8(const Tensor& x, const Tensor& x_scale, const Tensor& w, const Tensor& w_scale, const Tensor& y,
                       cudaStream_t stream) {
  const char* op = "cublaslt_gemm_fp8";
  check_2d(x, DType::e4m3, "x", op);
  check_2d(w, DType::e4m3, "W", op);
  check_2d(y, DType::bf16, "y", op);
  const int64_t m = x.size(0), k = x.size(1), n = w.size(0);
  MXMOE_CHECK(w.size(1) == k && y.size(0) == m && y.size(1) == n && k % 16 == 0, op, ": x ", shape_str(x.shape()),
              " W ", shape_str(w.shape()), " y ", shape_str(y.shape()), " (K must be a multiple of 16)");
  for (const Tensor* s : {&x_scale, &w_scale})
    MXMOE_CHECK(s->numel() == 1 && s->dtype() == DType::f32 && s->device() == Device::cuda, op,
                ": scales must be one CUDA f32 each, got ", shape_str(s->shape()), " ", dtype_name(s->dtype()));
  if (m == 0 || n == 0) return;
  const LtGemmShape shape{m, n, k, LtGemmType::fp8, false, operands_alignment({x.data(), w.data(), y.data()})};
  run(shape, w.data(), x.data(), y.data(), nullptr, w_scale.data(), x_scale.data(), stream);
}

void cublaslt_linear_mxfp8(const Tensor& x, const MxTensor& w, const Tensor* bias, const Tensor& y, ScaleRule rule,
                           cudaStream_t stream) {
  MXMOE_CHECK(x.dim() == 2, "cublaslt_linear_mxfp8: x must be 2-D, got ", shape_str(x.shape()));
  const int64_t m = x.size(0), k = x.size(1);
  const StreamScratch elems({m, k}, DType::e4m3, stream);                   // [M, K]
  const StreamScratch scales({m, k / kMxBlock}, DType::e8m0, stream);       // [M, K/32]
  const StreamScratch tiled(swizzled_scales_shape({m, k / kMxBlock}), DType::e8m0, stream);  // tiled [M, K/32]
  mxfp8_quantize(x, {elems.tensor(), scales.tensor()}, rule, stream);
  mxfp8_swizzle_scales(scales.tensor(), tiled.tensor(), stream);
  cublaslt_gemm_mxfp8({elems.tensor(), tiled.tensor()}, w, bias, y, stream);
}

StreamScratch::StreamScratch(const Shape& shape, DType dtype, cudaStream_t stream) : stream_(stream) {
  tensor_ = Tensor::wrap(nullptr, shape, dtype, Device::cuda);
  void* p = nullptr;
  if (tensor_.nbytes() > 0) CUDA_CHECK(cudaMallocAsync(&p, tensor_.nbytes(), stream));
  tensor_ = Tensor::wrap(p, shape, dtype, Device::cuda);
}

StreamScratch::~StreamScratch() {
  if (tensor_.data()) cudaFreeAsync(tensor_.data(), stream_);
}

}  // namespace mxmoe
