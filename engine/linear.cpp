#include "engine/linear.h"

#include <functional>
#include <numeric>
#include <utility>

#include "engine/error.h"
#include "engine/gpu_info.h"
#include "engine/log.h"
#include "engine/stream.h"
#include "kernels/cublaslt_gemm.h"
#include "kernels/dequant_gemm.h"
#include "kernels/matmul_ref.h"
#include "kernels/w8a16_gemm.h"
#include "kernels/w8a16_gemv.h"

namespace mxmoe {

namespace {

// A backend a method may use: its name and why it cannot run for this layer ("" = it can).
struct Candidate {
  const char* name;
  std::function<std::string()> why_not;
};

// The first candidate that can run (or the forced one), logged in one line with the refusals.
std::string choose_backend(const LinearLayer& layer, const char* scheme, const std::vector<Candidate>& candidates,
                           const std::string& forced) {
  std::string skipped;
  for (const Candidate& c : candidates) {
    if (!forced.empty() && forced != c.name) continue;
    const std::string reason = c.why_not();
    if (reason.empty()) {
      log_info(layer.name(), ": ", scheme, " linear [", layer.output_size_per_partition(), " x ",
               layer.input_size_per_partition(), "] on ", c.name, skipped.empty() ? "" : " (", skipped,
               skipped.empty() ? "" : ")");
      return c.name;
    }
    MXMOE_CHECK(forced.empty(), "layer ", layer.name(), ": the forced ", scheme, " backend ", forced,
                " cannot run: ", reason);
    skipped += cat(skipped.empty() ? "" : "; ", c.name, ": ", reason);
  }
  std::string names;
  for (const Candidate& c : candidates) names += cat(names.empty() ? "" : ", ", c.name);
  fail("layer ", layer.name(), ": no ", scheme, " backend can run", forced.empty() ? "" : cat(" (forced ", forced, ")"),
       "; candidates: ", names, skipped.empty() ? "" : cat(" (", skipped, ")"));
}

std::string this_gpu() { return cat("this GPU is sm_", gpu_info().major, gpu_info().minor); }

// ---------------------------------------------------------------------------------------------
// bf16: the checkpoint weight as loaded; cuBLASLt on the GPU, matmul_ref on the CPU.

class Bf16LinearMethod final : public LinearMethod {
 public:
  const char* scheme() const override { return "bf16"; }

  void create_weights(LinearLayer& layer, int64_t input_size_per_partition,
                      const std::vector<int64_t>& output_partition_sizes, int64_t, int64_t,
                      DType params_dtype) override {
    layer.weight_shape = {std::accumulate(output_partition_sizes.begin(), output_partition_sizes.end(), int64_t(0)),
                          input_size_per_partition};
    layer.params_dtype = params_dtype;
  }

  void process_weights_after_loading(LinearLayer& layer) override {
    if (!backend_.empty()) return;
    backend_ = choose_backend(layer, scheme(), {{layer.device() == Device::cpu ? "reference" : "cublaslt-bf16", [] {
                                                 return std::string();
                                               }}},
                              "");
  }

  void apply(LinearLayer& layer, const Tensor& x, const Tensor* bias, const Tensor& out,
             cudaStream_t stream) override {
    if (layer.device() == Device::cpu)
      matmul_ref(x, layer.weight, bias, out);
    else
      cublaslt_gemm_bf16(x, layer.weight, bias, out, stream);
  }

  std::string backend() const override { return backend_; }

 private:
  std::string backend_;
};

// ---------------------------------------------------------------------------------------------
// MXFP8: quantized at load (fp8 e4m3 + one e8m0 scale per 32 inputs), then one of
//   cublaslt-block-scaled  sm_100+: activations quantized on the fly, both operands scaled by cuBLASLt
//   w8a16                  sm_90: our weight-only kernels, GEMV for M <= kGemvMaxM (32); above, our tensor-core GEMM
//                          or dequantize + cuBLASLt bf16, whichever dequant_gemm_is_faster predicts
//   dequant-cublaslt       any GPU: dequantize W to bf16 scratch + cuBLASLt bf16 (slow fallback)
//   reference              CPU tensors

class Mxfp8LinearMethod final : public LinearMethod {
 public:
  explicit Mxfp8LinearMethod(const QuantConfig& config) : rule_(config.scale_rule), forced_(config.mxfp8_backend) {}

  const char* scheme() const override { return "mxfp8"; }

  void create_weights(LinearLayer& layer, int64_t input_size_per_partition,
                      const std::vector<int64_t>& output_partition_sizes, int64_t input_size, int64_t,
                      DType params_dtype) override {
    MXMOE_CHECK(input_size_per_partition % kMxBlock == 0, "layer ", layer.name(),
                ": MXFP8 needs the input size per partition to be a multiple of ", kMxBlock, ", got ",
                input_size_per_partition, " (input size ", input_size, ", tensor parallel ", layer.config().tp_size,
                "); use --quantization bf16 for this model");
    layer.weight_shape = {std::accumulate(output_partition_sizes.begin(), output_partition_sizes.end(), int64_t(0)),
                          input_size_per_partition};
    layer.params_dtype = params_dtype;
  }

  void process_weights_after_loading(LinearLayer& layer) override {
    if (!backend_.empty()) return;
    quantize(layer);
    const std::vector<Candidate> gpu = {
        {"cublaslt-block-scaled", [&] { return block_scaled_why_not(layer); }},
        {"w8a16", [] { return gpu_info().major == 9 ? std::string() : cat("needs sm_90, ", this_gpu()); }},
        {"dequant-cublaslt", [] { return std::string(); }}};
    const std::vector<Candidate> cpu = {{"reference", [] { return std::string(); }}};
    backend_ = choose_backend(layer, scheme(), layer.device() == Device::cpu ? cpu : gpu, forced_);
    if (backend_ == "cublaslt-block-scaled") {  // cuBLASLt reads the weight scales tiled: convert once
      const Tensor& s = layer.weight_mx.scales;  // [N, K/32]
      tiled_ = {layer.weight_mx.elems, Tensor::empty(swizzled_scales_shape(s.shape()), DType::e8m0, Device::cuda)};
      const Stream stream;
      mxfp8_swizzle_scales(s, tiled_.scales, stream);
      stream.synchronize();
    }
  }

  void apply(LinearLayer& layer, const Tensor& x, const Tensor* bias, const Tensor& out,
             cudaStream_t stream) override {
    if (backend_ == "w8a16") {
      const int64_t m = x.size(0), n = out.size(1), k = x.size(1);
      if (m <= kGemvMaxM)
        w8a16_gemv(x, layer.weight_mx, bias, out, stream);
      else if (dequant_gemm_is_faster(m, n, k, gpu_info().sm_count))
        dequant_gemm(x, layer.weight_mx, bias, out, stream);
      else
        w8a16_gemm(x, layer.weight_mx, bias, out, stream);
    } else if (backend_ == "cublaslt-block-scaled") {
      cublaslt_linear_mxfp8(x, tiled_, bias, out, rule_, stream);
    } else if (backend_ == "dequant-cublaslt") {
      dequant_gemm(x, layer.weight_mx, bias, out, stream);
    } else {
      matmul_ref(x, layer.weight_mx, bias, out);
    }
  }

  std::string backend() const override { return backend_; }

 private:
  // Quantizes each part on its own (MXFP8 rows are independent) so a NaN/Inf error names the
  // checkpoint tensor, then frees the bf16 load buffer.
  void quantize(LinearLayer& layer) {
    MXMOE_CHECK(layer.weight.defined() && layer.weight.numel() > 0, "layer ", layer.name(),
                ": process_weights_after_loading before its weights were loaded");
    layer.weight_mx = mxfp8_empty(layer.weight_shape, layer.device());
    const std::unique_ptr<Stream> stream = layer.device() == Device::cuda ? std::make_unique<Stream>() : nullptr;
    int64_t row = 0;
    for (size_t p = 0; p < layer.output_partition_sizes().size(); ++p) {
      const int64_t rows = layer.output_partition_sizes()[p];
      const Tensor w = layer.weight.slice(row, row + rows);
      const MxTensor q{layer.weight_mx.elems.slice(row, row + rows), layer.weight_mx.scales.slice(row, row + rows)};
      const std::string name = layer.config().parts[p].name + ".weight";
      if (stream) {
        mxfp8_quantize_weight(w, q, rule_, *stream, name);
      } else {
        const int64_t nonfinite = mxfp8_quantize_ref(w, q, rule_);
        MXMOE_CHECK(nonfinite == 0, "weight ", name, " ", shape_str(w.shape()), " holds ", nonfinite,
                    " NaN/Inf value(s); refusing to quantize it");
      }
      row += rows;
    }
    layer.weight = Tensor();
  }

  std::string block_scaled_why_not(const LinearLayer& layer) const {
    if (gpu_info().major < 10) return cat("needs sm_100+, ", this_gpu());
    // Probe a decode and a prefill size; other sizes are planned on first use.
    for (const int64_t m : {int64_t(1), int64_t(2048)}) {
      const std::string refusal = cublaslt_probe({m, layer.output_size_per_partition(),
                                                  layer.input_size_per_partition(), LtGemmType::mxfp8,
                                                  layer.bias.defined() && layer.bias.numel() > 0});
      if (!refusal.empty()) return cat("M=", m, ": ", refusal);
    }
    return "";
  }

  ScaleRule rule_;
  std::string forced_;
  std::string backend_;
  MxTensor tiled_;  // cublaslt-block-scaled: weight_mx.elems + tiled scales [round_up(N,128)·round_up(K/32,4)]
};

}  // namespace

std::unique_ptr<LinearMethod> make_bf16_linear_method(const QuantConfig&) {
  return std::make_unique<Bf16LinearMethod>();
}

std::unique_ptr<LinearMethod> make_mxfp8_linear_method(const QuantConfig& config) {
  return std::make_unique<Mxfp8LinearMethod>(config);
}

// ---------------------------------------------------------------------------------------------
// LinearLayer

LinearLayer::LinearLayer(LinearConfig config, const QuantConfig& quant) : config_(std::move(config)) {
  const LinearConfig& c = config_;
  MXMOE_CHECK(!c.parts.empty() && c.input_size > 0, "layer ", c.name, ": needs an input size and at least one part");
  MXMOE_CHECK(c.tp_size >= 1 && c.tp_rank >= 0 && c.tp_rank < c.tp_size, "layer ", c.name, ": tensor parallel rank ",
              c.tp_rank, " of ", c.tp_size);
  const int64_t tp = c.parallel == LinearParallel::replicated ? 1 : c.tp_size;
  int64_t output_size = 0;
  for (const LinearPart& part : c.parts) {
    MXMOE_CHECK(part.size > 0, "layer ", c.name, ": part ", part.name, " has size ", part.size);
    MXMOE_CHECK(c.parallel != LinearParallel::column || part.size % tp == 0, "layer ", c.name, ": part ", part.name,
                " has ", part.size, " output rows, not divisible by tensor parallel size ", tp);
    output_partition_sizes_.push_back(c.parallel == LinearParallel::column ? part.size / tp : part.size);
    output_size += part.size;
  }
  MXMOE_CHECK(c.parallel != LinearParallel::row || c.input_size % tp == 0, "layer ", c.name, ": input size ",
              c.input_size, " not divisible by tensor parallel size ", tp);
  input_size_per_partition_ = c.parallel == LinearParallel::row ? c.input_size / tp : c.input_size;
  method_ = make_linear_method(quant.scheme_for(c.role), quant, c.name);
  method_->create_weights(*this, input_size_per_partition_, output_partition_sizes_, c.input_size, output_size,
                          DType::bf16);
}

int64_t LinearLayer::output_size_per_partition() const {
  return std::accumulate(output_partition_sizes_.begin(), output_partition_sizes_.end(), int64_t(0));
}

bool LinearLayer::adds_bias() const {
  return config_.bias && !(config_.parallel == LinearParallel::row && config_.tp_rank > 0);
}

std::vector<WeightSpec> LinearLayer::weight_specs() const {
  const LinearConfig& c = config_;
  std::vector<WeightSpec> specs;
  for (size_t p = 0; p < c.parts.size(); ++p) {
    const int64_t rows = output_partition_sizes_[p];
    WeightSpec w{c.parts[p].name + ".weight", {c.parts[p].size, c.input_size}};
    if (c.parallel == LinearParallel::column) w.shard = {0, c.tp_rank * rows, rows};
    if (c.parallel == LinearParallel::row)
      w.shard = {1, c.tp_rank * input_size_per_partition_, input_size_per_partition_};
    specs.push_back(w);
  }
  if (adds_bias())
    for (size_t p = 0; p < c.parts.size(); ++p) {
      const int64_t rows = output_partition_sizes_[p];
      WeightSpec b{c.parts[p].name + ".bias", {c.parts[p].size}};
      if (c.parallel == LinearParallel::column) b.shard = {0, c.tp_rank * rows, rows};
      specs.push_back(b);
    }
  return specs;
}

void LinearLayer::begin_loading() {
  weight = Tensor::empty(weight_shape, params_dtype, config_.device);
  if (adds_bias()) bias = Tensor::empty({output_size_per_partition()}, DType::bf16, config_.device);
}

Tensor LinearLayer::weight_dest(size_t spec_index) {
  const size_t parts = config_.parts.size();
  MXMOE_CHECK(spec_index < (adds_bias() ? 2 * parts : parts), "layer ", name(), ": weight spec ", spec_index,
              " out of range");
  MXMOE_CHECK(weight.defined() && weight.numel() > 0, "layer ", name(), ": weight_dest before begin_loading");
  const size_t p = spec_index % parts;
  const int64_t row = std::accumulate(output_partition_sizes_.begin(), output_partition_sizes_.begin() + p, int64_t(0));
  const Tensor& dest = spec_index < parts ? weight : bias;
  return dest.slice(row, row + output_partition_sizes_[p]);
}

void LinearLayer::finish_loading() { method_->process_weights_after_loading(*this); }

void LinearLayer::forward(const Tensor& x, const Tensor& out, cudaStream_t stream) {
  MXMOE_CHECK(!method_->backend().empty(), "layer ", name(), ": forward before its weights were loaded");
  const int64_t k = input_size_per_partition_, n = output_size_per_partition();
  MXMOE_CHECK(x.dim() == 2 && x.size(1) == k && x.dtype() == DType::bf16 && x.device() == config_.device, "layer ",
              name(), ": input must be [M, ", k, "] bf16 on the layer's device, got ", shape_str(x.shape()), " ",
              dtype_name(x.dtype()));
  const bool f32_ok = std::string(method_->scheme()) == "bf16" && !adds_bias();
  MXMOE_CHECK(out.dim() == 2 && out.size(0) == x.size(0) && out.size(1) == n &&
                  (out.dtype() == DType::bf16 || (f32_ok && out.dtype() == DType::f32)) &&
                  out.device() == config_.device,
              "layer ", name(), ": output must be [", x.size(0), ", ", n, "] bf16", f32_ok ? " or f32" : "",
              " on the layer's device, got ", shape_str(out.shape()), " ", dtype_name(out.dtype()));
  if (x.size(0) == 0) return;
  method_->apply(*this, x, adds_bias() ? &bias : nullptr, out, stream);
}

}  // namespace mxmoe
