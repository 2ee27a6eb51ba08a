// bench-loader: checkpoint load throughput from the page cache with online MXFP8 quantization,
// against the pinned host->device bandwidth measured in the same run (target: >= 60% of it).
// Writes a synthetic bf16 checkpoint with Qwen3-30B-A3B layer shapes (per-expert tensors, two
// shards and an index) to --dir, reads it once to warm the page cache, measures the pipeline's
// parts alone (pinned allocation, gathering mmap -> pinned with 1..16 threads, page faults,
// registering the mapping for DMA), loads it with several settings (each through a fresh
// mapping, as a process would), then generates dummy weights for the whole model of --config.
//   bench-loader [--gb 9] [--dir /tmp/mxmoe-bench-loader] [--config loader/configs/qwen3-30b-a3b.json]
//                [--no-dummy]
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <thread>

#include "apps/bench_util.h"
#include "engine/cuda_check.h"
#include "engine/log.h"
#include "kernels/convert.h"
#include "loader/model_config.h"
#include "loader/safetensors_writer.h"
#include "loader/weight_loader.h"
#include "loader/weight_set.h"
#include "loader/worker_pool.h"

using namespace mxmoe;
namespace fs = std::filesystem;

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

WeightSpec spec(const std::string& name, const Shape& shape, float mean = 0.f, float std = 0.02f) {
  WeightSpec s;
  s.name = name;
  s.shape = shape;
  s.dummy_mean = mean;
  s.dummy_std = std;
  return s;
}

// One decoder layer of a Qwen3-MoE-style model: attention (+ router), the experts, the norms.
struct LayerSpecs {
  std::vector<WeightSpec> attention, experts, norms;
};

LayerSpecs layer_specs(const ModelConfig& c, int64_t l) {
  const std::string p = cat("model.layers.", l, ".");
  const int64_t h = c.hidden_size, q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
  LayerSpecs s;
  s.attention = {spec(p + "self_attn.q_proj.weight", {q, h}), spec(p + "self_attn.k_proj.weight", {kv, h}),
                 spec(p + "self_attn.v_proj.weight", {kv, h}), spec(p + "self_attn.o_proj.weight", {h, q}),
                 spec(p + "mlp.gate.weight", {c.num_experts, h})};
  const int64_t i = c.moe_intermediate_size;
  for (int64_t e = 0; e < c.num_experts; ++e) {
    const std::string x = cat(p, "mlp.experts.", e, ".");
    s.experts.push_back(spec(x + "gate_proj.weight", {i, h}));
    s.experts.push_back(spec(x + "up_proj.weight", {i, h}));
    s.experts.push_back(spec(x + "down_proj.weight", {h, i}));
  }
  s.norms = {spec(p + "input_layernorm.weight", {h}, 1.f, 0.01f), spec(p + "post_attention_layernorm.weight", {h}, 1.f, 0.01f)};
  return s;
}

size_t bytes_of(const std::vector<WeightSpec>& specs) {
  size_t n = 0;
  for (const WeightSpec& s : specs) {
    int64_t e = 1;
    for (int64_t d : s.shape) e *= d;
    n += size_t(e) * 2;
  }
  return n;
}

double pinned_h2d_gbs(cudaStream_t stream) {
  const size_t bytes = size_t(256) << 20;
  Tensor host = Tensor::empty_pinned({int64_t(bytes)}, DType::u8);
  Tensor dev = Tensor::empty({int64_t(bytes)}, DType::u8, Device::cuda);
  std::memset(host.data(), 1, bytes);
  const double ms = bench::median_ms(stream, [&](int) {
    CUDA_CHECK(cudaMemcpyAsync(dev.data(), host.data(), bytes, cudaMemcpyHostToDevice, stream));
  }, 3, 20);
  return double(bytes) / (ms * 1e-3) / 1e9;
}

// Back-to-back copies of `chunk` bytes from three rotating pinned buffers (what the loader's
// staging can reach at best), GB/s.
double pinned_h2d_chunked_gbs(cudaStream_t stream, size_t chunk) {
  constexpr int kBuffers = 3, kCopies = 48;
  std::vector<Tensor> host;
  for (int i = 0; i < kBuffers; ++i) {
    host.push_back(Tensor::empty_pinned({int64_t(chunk)}, DType::u8));
    std::memset(host.back().data(), 1, chunk);
  }
  Tensor dev = Tensor::empty({int64_t(chunk) * kBuffers}, DType::u8, Device::cuda);
  const double ms = bench::median_ms(stream, [&](int) {
    for (int i = 0; i < kCopies; ++i)
      CUDA_CHECK(cudaMemcpyAsync(dev.data_as<uint8_t>() + (i % kBuffers) * chunk, host[i % kBuffers].data(), chunk,
                                 cudaMemcpyHostToDevice, stream));
  }, 2, 10);
  return double(chunk) * kCopies / (ms * 1e-3) / 1e9;
}

// Seconds to allocate (and free) `count` pinned buffers of `bytes`, as the loader's staging.
double pinned_alloc_seconds(size_t bytes, int count) {
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<Tensor> buffers;
  for (int i = 0; i < count; ++i) buffers.push_back(Tensor::empty_pinned({int64_t(bytes)}, DType::u8));
  return seconds_since(t0);
}

// Reads every file once (into the page cache); returns GB/s.
double warm_page_cache(const std::vector<std::string>& files) {
  std::vector<char> buf(size_t(64) << 20);
  size_t total = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (const std::string& f : files) {
    const int fd = ::open(f.c_str(), O_RDONLY);
    MXMOE_CHECK(fd >= 0, f, ": cannot open");
    ssize_t n;
    while ((n = ::read(fd, buf.data(), buf.size())) > 0) total += size_t(n);
    ::close(fd);
  }
  return double(total) / seconds_since(t0) / 1e9;
}

// A fused-MoE layer as the model builds it: the per-expert checkpoint tensors land in one
// stacked bf16 buffer per projection, w13 [E, 2I, H] (gate rows, then up rows) and w2 [E, H, I],
// each quantized in one launch. (A Loadable per checkpoint tensor would spend the load in
// cudaMalloc/cudaFree: thousands of 3 MB allocations.)
class ExpertStack : public Loadable {
 public:
  ExpertStack(std::string name, std::vector<WeightSpec> specs, const ModelConfig& c, bool quantize)
      : name_(std::move(name)), specs_(std::move(specs)), e_(c.num_experts), i_(c.moe_intermediate_size),
        h_(c.hidden_size), quantize_(quantize) {}
  std::string loadable_name() const override { return name_; }
  std::vector<WeightSpec> weight_specs() const override { return specs_; }
  void begin_loading() override {
    w13_ = Tensor::empty({e_, 2 * i_, h_}, DType::bf16, Device::cuda);
    w2_ = Tensor::empty({e_, h_, i_}, DType::bf16, Device::cuda);
  }
  Tensor weight_dest(size_t k) override {  // specs: gate, up, down of expert k / 3
    const int64_t e = int64_t(k / 3);
    if (k % 3 == 2) return w2_.select(e);
    return w13_.select(e).narrow(0, k % 3 == 0 ? 0 : i_, i_);
  }
  void finish_loading() override {
    if (!quantize_) return;
    q13_ = mxfp8_empty(w13_.shape(), Device::cuda);
    mxfp8_quantize_weight(w13_, q13_, ScaleRule::rceil, stream_, name_ + ".w13");
    w13_ = Tensor();
    q2_ = mxfp8_empty(w2_.shape(), Device::cuda);
    mxfp8_quantize_weight(w2_, q2_, ScaleRule::rceil, stream_, name_ + ".w2");
    w2_ = Tensor();
  }

 private:
  std::string name_;
  std::vector<WeightSpec> specs_;
  int64_t e_, i_, h_;
  bool quantize_;
  Tensor w13_, w2_;  // [E, 2I, H], [E, H, I] bf16 while loading
  MxTensor q13_, q2_;
  Stream stream_;
};

// How fast the worker threads gather checkpoint bytes from the mmap into pinned memory alone
// (the CPU half of the pipeline), in GB/s: 1 MiB pieces of consecutive tensors, 16 MiB per
// parallel run, as the loader's staging. A fresh mapping pays the page faults as a load does.
double gather_gbs(const Checkpoint& ckpt, int threads) {
  const size_t chunk = size_t(16) << 20, piece = size_t(1) << 20;
  Tensor staging = Tensor::empty_pinned({int64_t(chunk)}, DType::u8);
  WorkerPool pool(threads);
  struct Piece {
    const uint8_t* src;
    size_t bytes;
  };
  std::vector<Piece> pieces;
  size_t total = 0, batch = 0;
  const auto run = [&] {
    pool.run(pieces.size(), [&](size_t k) {
      std::memcpy(staging.data_as<char>() + (k * piece) % chunk, pieces[k].src, pieces[k].bytes);
    });
    pieces.clear();
    batch = 0;
  };
  const auto t0 = std::chrono::steady_clock::now();
  for (const std::string& name : ckpt.names()) {
    const CheckpointTensor* t = ckpt.find(name);
    for (size_t off = 0; off < t->info->nbytes(); off += piece) {
      pieces.push_back({t->data() + off, std::min(piece, size_t(t->info->nbytes()) - off)});
      total += pieces.back().bytes;
      if ((batch += piece) >= chunk) run();
    }
  }
  run();
  return double(total) / seconds_since(t0) / 1e9;
}

// DMA straight from the file mapping instead of through staging: pins 1 GiB of it with
// cudaHostRegister (read-only, as the mapping is PROT_READ) and copies it to the GPU; prints what
// each step costs, once on pages not yet mapped into this process and once on mapped ones.
void register_mapping(const Checkpoint& ckpt, cudaStream_t stream) {
  int supported = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&supported, cudaDevAttrHostRegisterReadOnlySupported, current_device()));
  const size_t bytes = size_t(1) << 30, page = size_t(::sysconf(_SC_PAGESIZE));
  const CheckpointTensor* first = ckpt.find(ckpt.names()[0]);
  const uint8_t* lowest = first->data();  // the start of that file's data area
  for (const std::string& name : ckpt.names()) {
    const CheckpointTensor* t = ckpt.find(name);
    if (t->file == first->file) lowest = std::min(lowest, t->data());
  }
  void* base = reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(lowest) / page * page);
  Tensor dev = Tensor::empty({int64_t(bytes)}, DType::u8, Device::cuda);
  for (const char* pages : {"not yet mapped", "mapped"}) {
    if (std::string(pages) == "mapped")
      for (size_t off = 0; off < bytes; off += page) (void)static_cast<volatile const uint8_t*>(base)[off];
    auto t0 = std::chrono::steady_clock::now();
    const cudaError_t err = cudaHostRegister(base, bytes, cudaHostRegisterReadOnly);
    const double reg = seconds_since(t0);
    if (err != cudaSuccess) {
      std::printf("cudaHostRegister(read-only) of 1 GiB of the mapping: %s (read-only registration %ssupported)\n",
                  cudaGetErrorString(err), supported ? "" : "not ");
      (void)cudaGetLastError();
      return;
    }
    const double ms = bench::median_ms(stream, [&](int) {
      CUDA_CHECK(cudaMemcpyAsync(dev.data(), base, bytes, cudaMemcpyHostToDevice, stream));
    }, 1, 3);
    t0 = std::chrono::steady_clock::now();
    CUDA_CHECK(cudaHostUnregister(base));
    std::printf("cudaHostRegister(read-only) of 1 GiB of the mapping, pages %s: %.1f ms (%.1f GB/s); DMA from it "
                "%.1f GB/s; cudaHostUnregister %.1f ms\n",
                pages, reg * 1e3, double(bytes) / reg / 1e9, double(bytes) / (ms * 1e-3) / 1e9, seconds_since(t0) * 1e3);
  }
}

struct Variant {
  const char* name;
  int threads;  // 0: the default (hardware threads)
  size_t staging_mib;
  int buffers;
  bool quantize = true;
  bool same_mapping = false;  // reuse the previous variant's mapping (its pages already mapped)
};

}  // namespace

int main(int argc, char** argv) {
  double gb = 9;
  std::string dir = "/tmp/mxmoe-bench-loader", config_path = "loader/configs/qwen3-30b-a3b.json";
  bool dummy = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--gb" && i + 1 < argc) gb = std::atof(argv[++i]);
    else if (a == "--dir" && i + 1 < argc) dir = argv[++i];
    else if (a == "--config" && i + 1 < argc) config_path = argv[++i];
    else if (a == "--no-dummy") dummy = false;
    else {
      std::fprintf(stderr, "usage: %s [--gb N] [--dir D] [--config config.json] [--no-dummy]\n", argv[0]);
      return 2;
    }
  }
  try {
    const ModelConfig config = load_model_config(config_path);
    Stream stream;
    const double h2d = pinned_h2d_gbs(stream);
    std::printf("pinned host->device copy: %.1f GB/s (256 MiB, median of 20)\n", h2d);

    // Synthetic checkpoint: whole layers until `gb` is reached, split over two shards.
    const size_t layer_bytes = bytes_of(layer_specs(config, 0).attention) + bytes_of(layer_specs(config, 0).experts);
    const int64_t n_layers = std::max<int64_t>(1, int64_t(gb * 1e9 / double(layer_bytes)));
    fs::remove_all(dir);
    fs::create_directories(dir);
    Tensor pattern = Tensor::empty({int64_t(32) << 20}, DType::bf16, Device::cpu);  // 64 MiB of normal(0, 0.02)
    fill_normal_ref(pattern, {7, 0.f, 0.02f, whole_tensor_geometry(pattern.numel())});
    std::vector<std::vector<SafetensorsEntry>> shards(2);
    std::map<std::string, std::string> index;
    std::vector<std::string> files;
    for (int s = 0; s < 2; ++s) files.push_back(cat("model-0000", s + 1, "-of-00002.safetensors"));
    size_t offset = 0;
    for (int64_t l = 0; l < n_layers; ++l) {
      const LayerSpecs ls = layer_specs(config, l);
      for (const auto* group : {&ls.attention, &ls.experts})
        for (const WeightSpec& w : *group) {
          const int shard = l < n_layers / 2 ? 0 : 1;
          const size_t bytes = bytes_of({w});
          offset = (offset + 4096 * 7) % (pattern.nbytes() - bytes);  // different data per tensor
          shards[size_t(shard)].push_back({w.name, DType::bf16, w.shape, pattern.data_as<char>() + offset / 2 * 2});
          index[w.name] = files[size_t(shard)];
        }
    }
    const auto t_write = std::chrono::steady_clock::now();
    for (int s = 0; s < 2; ++s) write_safetensors(dir + "/" + files[size_t(s)], shards[size_t(s)]);
    write_safetensors_index(dir + "/model.safetensors.index.json", index);
    const double ckpt_gb = double(layer_bytes * size_t(n_layers)) / 1e9;
    std::printf("checkpoint: %lld layers of %s shapes, %.2f GB bf16, %zu tensors, written in %.1f s\n",
                (long long)n_layers, config.model_type.c_str(), ckpt_gb, index.size(), seconds_since(t_write));
    std::vector<std::string> paths;
    for (const std::string& f : files) paths.push_back(dir + "/" + f);
    std::printf("page-cache read (warm-up, 1 thread): %.1f GB/s\n", warm_page_cache(paths));

    std::printf("pinned host->device copy in 16 MiB pieces from 3 buffers: %.1f GB/s\n",
                pinned_h2d_chunked_gbs(stream, size_t(16) << 20));
    std::printf("pinned allocation of 3 x 16 MiB: %.1f ms; of 2 x 256 MiB: %.1f ms\n",
                pinned_alloc_seconds(size_t(16) << 20, 3) * 1e3, pinned_alloc_seconds(size_t(256) << 20, 2) * 1e3);
    {
      const auto t0 = std::chrono::steady_clock::now();
      Tensor w13 = Tensor::empty({config.num_experts, 2 * config.moe_intermediate_size, config.hidden_size}, DType::bf16, Device::cuda);
      Tensor w2 = Tensor::empty({config.num_experts, config.hidden_size, config.moe_intermediate_size}, DType::bf16, Device::cuda);
      const double alloc = seconds_since(t0);
      const auto t1 = std::chrono::steady_clock::now();
      w13 = Tensor();
      w2 = Tensor();
      std::printf("cudaMalloc of one layer's bf16 expert stacks (%.2f GB): %.2f ms, cudaFree %.2f ms\n",
                  double(bytes_of(layer_specs(config, 0).experts)) / 1e9, alloc * 1e3, seconds_since(t1) * 1e3);
    }
    for (int threads : {1, 8, 16}) {
      const Checkpoint fresh(dir);
      const double first = gather_gbs(fresh, threads);
      std::printf("gather mmap -> pinned, %2d thread(s), 1 MiB pieces: %.1f GB/s on a fresh mapping, %.1f GB/s again\n",
                  threads, first, gather_gbs(fresh, threads));
    }
    register_mapping(Checkpoint(dir), stream);

    const Variant variants[] = {
        {"default: hardware threads, 3 x 16 MiB", 0, 16, 3},
        {"the same, mapping already faulted in", 0, 16, 3, true, true},
        {"8 threads, 3 x 16 MiB", 8, 16, 3},
        {"12 threads, 3 x 16 MiB", 12, 16, 3},
        {"16 threads, 2 x 16 MiB", 16, 16, 2},
        {"16 threads, 4 x 16 MiB", 16, 16, 4},
        {"16 threads, 3 x 32 MiB", 16, 32, 3},
        {"16 threads, 4 x 8 MiB", 16, 8, 4},
        {"bf16 kept (no quantization), default", 0, 16, 3, false},
        {"default again", 0, 16, 3},
    };
    std::printf("\nEach load: MXFP8 unless said, a fresh mapping unless said (%u hardware threads). The loading "
                "thread's time: allocating staging / waiting for the gatherer / waiting for the GPU / layers' "
                "begin+finish_loading. Peak bound of the issue: quantized (resident) + the largest layer in bf16 "
                "(%.2f GiB; no staging scratch: no dtype conversion).\n"
                "| load variant | s | GB/s | vs pinned H2D | staging s | gather s | wait s | layers s | peak GiB | resident GiB |\n"
                "|---|---|---|---|---|---|---|---|---|---|\n",
                std::thread::hardware_concurrency(), double(bytes_of(layer_specs(config, 0).experts)) / kGiB);
    std::unique_ptr<Checkpoint> ckpt;
    for (const Variant& v : variants) {
      if (!v.same_mapping) {
        ckpt.reset();
        ckpt = std::make_unique<Checkpoint>(dir);
      }
      std::vector<std::unique_ptr<WeightSet>> sets;
      std::vector<std::unique_ptr<ExpertStack>> stacks;
      std::vector<Loadable*> layers;
      for (int64_t l = 0; l < n_layers; ++l) {
        const LayerSpecs ls = layer_specs(config, l);
        sets.push_back(std::make_unique<WeightSet>(cat("model.layers.", l, ".attn"), ls.attention, Device::cuda,
                                                   DType::bf16, v.quantize ? WeightSet::Mode::mxfp8 : WeightSet::Mode::keep));
        layers.push_back(sets.back().get());
        stacks.push_back(std::make_unique<ExpertStack>(cat("model.layers.", l, ".mlp.experts"), ls.experts, config, v.quantize));
        layers.push_back(stacks.back().get());
      }
      LoadOptions o;
      o.quiet = true;
      o.copy_threads = v.threads;
      o.staging_bytes = v.staging_mib << 20;
      o.staging_buffers = v.buffers;
      const LoadReport r = load_weights(*ckpt, layers, o);
      std::printf("| %s | %.3f | %.1f | %.0f%% | %.3f | %.3f | %.3f | %.3f | %.2f | %.2f |\n", v.name, r.seconds,
                  r.gb_per_s(), 100 * r.gb_per_s() / h2d, r.staging_seconds, r.gather_seconds, r.wait_seconds,
                  r.layer_seconds, r.peak_gpu_bytes / kGiB, r.resident_gpu_bytes / kGiB);
      std::fflush(stdout);
    }
    ckpt.reset();
    fs::remove_all(dir);

    if (dummy) {
      // The whole model with dummy weights: every linear weight quantized to MXFP8.
      std::vector<std::unique_ptr<WeightSet>> sets;
      std::vector<std::unique_ptr<ExpertStack>> stacks;
      std::vector<Loadable*> layers;
      const auto add = [&](const std::string& name, std::vector<WeightSpec> specs, DType dtype, WeightSet::Mode mode) {
        sets.push_back(std::make_unique<WeightSet>(name, std::move(specs), Device::cuda, dtype, mode));
        layers.push_back(sets.back().get());
      };
      add("embed", {spec("model.embed_tokens.weight", {config.vocab_size, config.hidden_size})}, DType::bf16,
          WeightSet::Mode::keep);
      size_t bf16_bytes = 0;
      for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
        const LayerSpecs ls = layer_specs(config, l);
        add(cat("model.layers.", l, ".self_attn"), ls.attention, DType::bf16, WeightSet::Mode::mxfp8);
        stacks.push_back(std::make_unique<ExpertStack>(cat("model.layers.", l, ".mlp.experts"), ls.experts, config, true));
        layers.push_back(stacks.back().get());
        add(cat("model.layers.", l, ".norms"), ls.norms, DType::bf16, WeightSet::Mode::keep);
        bf16_bytes += bytes_of(ls.attention) + bytes_of(ls.experts) + bytes_of(ls.norms);
      }
      add("lm_head", {spec("lm_head.weight", {config.vocab_size, config.hidden_size})}, DType::bf16, WeightSet::Mode::mxfp8);
      bf16_bytes += 2 * size_t(config.vocab_size * config.hidden_size) * 2;
      LoadOptions o;
      o.quiet = true;
      o.seed = 1;
      const LoadReport r = load_dummy_weights(layers, o);
      std::printf("\ndummy %s (%s, %lld layers): %.1f GB in bf16 generated and quantized in %.2f s; "
                  "peak GPU memory %.2f GiB, resident %.2f GiB\n",
                  fs::path(config_path).filename().c_str(), config.model_type.c_str(),
                  (long long)config.num_hidden_layers, bf16_bytes / 1e9, r.seconds, r.peak_gpu_bytes / kGiB,
                  r.resident_gpu_bytes / kGiB);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench-loader: %s\n", e.what());
    return 1;
  }
  return 0;
}
