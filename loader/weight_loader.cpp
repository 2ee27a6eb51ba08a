#include "loader/weight_loader.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "engine/cuda_check.h"
#include "engine/log.h"
#include "engine/stream.h"
#include "kernels/convert.h"
#include "kernels/mxfp8_format.h"
#include "loader/progress.h"
#include "loader/worker_pool.h"

namespace mxmoe {

Shape shard_shape(const WeightSpec& spec) {
  Shape s = spec.shape;
  if (spec.shard.dim >= 0 && spec.shard.dim < int(s.size())) s[spec.shard.dim] = spec.shard.length;
  return s;
}

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
constexpr size_t kAlign = 16;          // staging offsets: whole elements of any dtype, aligned DMA
constexpr size_t kPieceBytes = 256 << 10;  // unit of parallel copying: a chunk waits for its slowest piece

bool is_float(DType t) { return t == DType::f32 || t == DType::bf16 || t == DType::f16; }

// Adds the seconds between its construction and destruction to `total`.
class ScopedTimer {
 public:
  explicit ScopedTimer(double& total) : total_(total), start_(std::chrono::steady_clock::now()) {}
  ~ScopedTimer() { total_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }
  ScopedTimer(const ScopedTimer&) = delete;
  ScopedTimer& operator=(const ScopedTimer&) = delete;

 private:
  double& total_;
  std::chrono::steady_clock::time_point start_;
};

// The part of a checkpoint tensor a spec reads, as [outer, full, inner] with elements
// [begin, begin + length) of the middle dimension (FillGeometry, shared with the dummy fill).
FillGeometry slice_geometry(const WeightSpec& spec, const std::string& layer) {
  const ShardSlice& s = spec.shard;
  const int rank = int(spec.shape.size());
  int64_t numel = 1;
  for (int64_t d : spec.shape) numel *= d;
  if (s.dim < 0) return whole_tensor_geometry(numel);
  MXMOE_CHECK(s.dim < rank && s.begin >= 0 && s.length >= 0 && s.begin + s.length <= spec.shape[s.dim], layer,
              ": shard of ", spec.name, " (dim ", s.dim, ", begin ", s.begin, ", length ", s.length,
              ") is outside its shape ", shape_str(spec.shape));
  FillGeometry g{1, spec.shape[s.dim], s.begin, s.length, 1};
  for (int d = 0; d < s.dim; ++d) g.outer *= spec.shape[d];
  for (int d = s.dim + 1; d < rank; ++d) g.inner *= spec.shape[d];
  return g;
}

// weight_dest(i), checked against the slice it must hold.
Tensor checked_dest(Loadable& layer, size_t i, const WeightSpec& spec) {
  Tensor dest = layer.weight_dest(i);
  MXMOE_CHECK(dest.shape() == shard_shape(spec) && dest.is_contiguous(), layer.loadable_name(), ": destination of ",
              spec.name, " is ", dest.is_contiguous() ? "" : "non-contiguous ", shape_str(dest.shape()),
              ", expected contiguous ", shape_str(shard_shape(spec)));
  return dest;
}

uint64_t name_hash(const std::string& s) {  // FNV-1a
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

// A tensor slice to read from the mmap, planned before its layer begins loading.
struct Source {
  std::string where;  // "tensor X in file F"
  const uint8_t* src;
  DType dtype;
  FillGeometry g;
  size_t bytes() const { return size_t(g.outer * g.length * g.inner) * dtype_size(dtype); }
};

// Page-locked host memory for the staging buffers: page-aligned memory, touched by the worker
// threads, then registered with cudaHostRegister (H100 box, 3 x 16 MiB: 7-10 ms this way,
// 21-27 ms with cudaMallocHost). Plain host memory without a GPU.
class HostStaging {
 public:
  HostStaging(size_t bytes, bool pin, WorkerPool& pool) : bytes_(round_up(int64_t(bytes), int64_t(kPage))) {
    data_ = static_cast<uint8_t*>(std::aligned_alloc(kPage, bytes_));
    MXMOE_CHECK(data_, "out of host memory allocating ", bytes_, " bytes of staging");
    pool.run(bytes_ / kPage, [&](size_t i) { std::memset(data_ + i * kPage, 0, kPage); });
    if (!pin) return;
    const cudaError_t err = cudaHostRegister(data_, bytes_, cudaHostRegisterDefault);
    if (err != cudaSuccess) std::free(data_);
    CUDA_CHECK(err);
    pinned_ = true;
  }
  ~HostStaging() {
    if (pinned_) cudaHostUnregister(data_);
    std::free(data_);
  }
  HostStaging(const HostStaging&) = delete;
  HostStaging& operator=(const HostStaging&) = delete;
  uint8_t* data() const { return data_; }

 private:
  static constexpr size_t kPage = 1 << 16;  // alignment, and the unit of parallel touching
  size_t bytes_;
  uint8_t* data_ = nullptr;
  bool pinned_ = false;
};

// The staging pipeline. A gatherer thread (driving the worker pool) copies chunks of packed
// slice bytes from the mmap into the staging buffers, running ahead of the loading thread, also
// across layer boundaries (while the loading thread waits for the GPU or runs a layer's
// begin/finish_loading). The loading thread moves each gathered chunk into its destinations: on
// the GPU a DMA on the copy stream, then the conversion / NaN-check kernels on a second stream
// (so the next DMA never waits for a kernel launch); on the CPU a copy or conversion. A buffer
// goes back to the gatherer once the GPU is done with it.
class Streamer {
 public:
  // Plans the chunks of every layer's sources and starts the gatherer; accumulates the loading
  // thread's time breakdown into `report`.
  Streamer(const LoadOptions& o, const std::vector<std::vector<Source>>& layers, LoadReport& report)
      : chunk_(std::max(kAlign, o.staging_bytes / kAlign * kAlign)),
        layers_(layers),
        pool_(o.copy_threads > 0 ? o.copy_threads : int(std::clamp(std::thread::hardware_concurrency(), 1u, 32u))),
        report_(report) {
    plan();
    const ScopedTimer timer(report.staging_seconds);
    const bool gpu = cuda_available();
    if (gpu) {
      device_ = current_device();
      copy_.emplace();
      work_.emplace();
    }
    const size_t n = size_t(std::max(1, o.staging_buffers));
    host_.emplace(n * chunk_, gpu, pool_);
    for (size_t i = 0; i < n; ++i) {
      Slot s;
      s.host = host_->data() + i * chunk_;
      if (gpu) {
        s.copied = std::make_unique<Event>(cudaEventDisableTiming);
        s.done = std::make_unique<Event>(cudaEventDisableTiming);
      }
      slots_.push_back(std::move(s));
    }
    gatherer_ = std::thread([this] { gather_all(); });
  }

  ~Streamer() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    changed_.notify_all();
    gatherer_.join();
    // After an error nothing may still read the staging buffers or write a destination.
    if (copy_) cudaStreamSynchronize(*copy_);
    if (work_) cudaStreamSynchronize(*work_);
  }
  Streamer(const Streamer&) = delete;
  Streamer& operator=(const Streamer&) = delete;

  // Moves the bytes of layer l's sources into `dests` (one per source, the checked
  // destinations); returns when they are there. NaN/Inf in a float destination is an error
  // naming the tensor.
  void load_layer(size_t l, const std::vector<Tensor>& dests) {
    const std::vector<Source>& sources = layers_[l];
    cpu_counts_.assign(sources.size(), 0);
    const bool any_gpu = std::any_of(dests.begin(), dests.end(), [](const Tensor& d) { return d.device() == Device::cuda; });
    if (any_gpu) {
      MXMOE_CHECK(copy_, "a layer asked for weights on the GPU but no GPU is available");
      if (!gpu_counts_.defined() || gpu_counts_.numel() < int64_t(sources.size())) {
        gpu_counts_ = Tensor::empty({int64_t(sources.size())}, DType::i32, Device::cuda);
        host_counts_ = Tensor::empty_pinned({int64_t(sources.size())}, DType::i32);
      }
      CUDA_CHECK(cudaMemsetAsync(gpu_counts_.data(), 0, sources.size() * sizeof(int), *work_));
    }
    for (size_t c = first_chunk_[l]; c < first_chunk_[l + 1]; ++c) {
      wait_gathered(c);
      Slot& slot = slots_[c % slots_.size()];
      for (const Segment& s : chunks_[c].segments) copy(target(s, l, slot, dests), slot);
      if (slot.done) {
        slot.copied->record(*copy_);
        CUDA_CHECK(cudaStreamWaitEvent(*work_, *slot.copied));
        for (const Segment& s : chunks_[c].segments) finish(target(s, l, slot, dests), slot);
        slot.done->record(*work_);
      }
      {
        std::lock_guard lock(mutex_);
        issued_ = c + 1;
      }
      changed_.notify_all();
    }
    if (any_gpu) {
      CUDA_CHECK(cudaMemcpyAsync(host_counts_.data(), gpu_counts_.data(), sources.size() * sizeof(int),
                                 cudaMemcpyDeviceToHost, *work_));
      const ScopedTimer timer(report_.wait_seconds);
      work_->synchronize();  // it waited for every copy too
    }
    for (size_t j = 0; j < sources.size(); ++j) {
      const int64_t bad = dests[j].device() == Device::cuda ? host_counts_.data_as<int>()[j] : cpu_counts_[j];
      MXMOE_CHECK(bad == 0, sources[j].where, " holds ", bad, " NaN/Inf value(s)");
    }
  }

 private:
  struct Slot {
    uint8_t* host;   // [chunk] in host_, pinned when a GPU is present
    Tensor scratch;  // [chunk] u8 on the GPU, allocated on first conversion
    std::unique_ptr<Event> copied;  // on the copy stream: this chunk's DMAs are done
    std::unique_ptr<Event> done;    // on the work stream: its kernels too, the slot is free
  };
  struct Segment {
    size_t source, offset, bytes, staging_offset;  // bytes [offset, offset+bytes) of the source's packed slice
  };
  struct Chunk {
    size_t layer;
    std::vector<Segment> segments;
  };

  // Cuts every layer's packed slice bytes into chunks of at most chunk_ bytes; a layer's last
  // chunk holds only that layer's bytes.
  void plan() {
    for (size_t l = 0; l < layers_.size(); ++l) {
      first_chunk_.push_back(chunks_.size());
      Chunk chunk{l, {}};
      size_t used = 0;  // bytes of the current chunk
      for (size_t j = 0; j < layers_[l].size(); ++j) {
        const size_t total = layers_[l][j].bytes();
        for (size_t off = 0; off < total;) {
          used = round_up(int64_t(used), int64_t(kAlign));
          size_t len = std::min(total - off, chunk_ - std::min(used, chunk_));
          if (off + len < total) len = len / kAlign * kAlign;  // a piece that is continued ends aligned
          if (len == 0) {
            chunks_.push_back(std::move(chunk));
            chunk = {l, {}};
            used = 0;
            continue;
          }
          chunk.segments.push_back({j, off, len, used});
          off += len;
          used += len;
        }
      }
      if (!chunk.segments.empty()) chunks_.push_back(std::move(chunk));
    }
    first_chunk_.push_back(chunks_.size());
  }

  // The gatherer thread: chunk c goes into slot c % slots once chunk c - slots has been
  // moved out of it.
  void gather_all() {
    try {
      if (copy_) CUDA_CHECK(cudaSetDevice(device_));
      for (size_t c = 0; c < chunks_.size(); ++c) {
        {
          std::unique_lock lock(mutex_);
          changed_.wait(lock, [&] { return stop_ || issued_ + slots_.size() > c; });
          if (stop_) return;
        }
        Slot& slot = slots_[c % slots_.size()];
        if (slot.done && c >= slots_.size()) slot.done->synchronize();
        pack(chunks_[c], slot.host);
        {
          std::lock_guard lock(mutex_);
          gathered_ = c + 1;
        }
        changed_.notify_all();
      }
    } catch (...) {
      {
        std::lock_guard lock(mutex_);
        error_ = std::current_exception();
      }
      changed_.notify_all();
    }
  }

  void wait_gathered(size_t c) {
    const ScopedTimer timer(report_.gather_seconds);
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return gathered_ > c || error_; });
    if (gathered_ <= c) std::rethrow_exception(error_);
  }

  // Copies a chunk's segments from the mmap into a staging buffer, in parallel.
  void pack(const Chunk& chunk, uint8_t* staging) {
    struct Piece {
      uint8_t* dst;
      const uint8_t* src;
      size_t bytes;
    };
    std::vector<Piece> pieces;
    for (const Segment& s : chunk.segments) {
      const Source& src = layers_[chunk.layer][s.source];
      const size_t esize = dtype_size(src.dtype);
      const size_t row = size_t(src.g.length * src.g.inner) * esize;  // slice bytes per outer index
      const size_t pitch = size_t(src.g.full * src.g.inner) * esize;
      const uint8_t* first = src.src + size_t(src.g.begin * src.g.inner) * esize;
      for (size_t p = s.offset; p < s.offset + s.bytes;) {
        const size_t r = p / row, within = p % row;
        const size_t n = std::min({row - within, s.offset + s.bytes - p, kPieceBytes});
        pieces.push_back({staging + s.staging_offset + (p - s.offset), first + r * pitch + within, n});
        p += n;
      }
    }
    pool_.run(pieces.size(), [&](size_t i) { std::memcpy(pieces[i].dst, pieces[i].src, pieces[i].bytes); });
  }

  // Where segment s of layer l goes: its destination elements, and the staged bytes.
  struct Target {
    const Segment& s;
    const Tensor& dest;
    DType from, to;
    int64_t n;        // elements
    void* dst;        // first destination element
    uint8_t* staged;  // in the slot's host buffer
  };
  Target target(const Segment& s, size_t l, const Slot& slot, const std::vector<Tensor>& dests) const {
    const Tensor& dest = dests[s.source];
    const DType from = layers_[l][s.source].dtype, to = dest.dtype();
    const size_t first = s.offset / dtype_size(from);
    return {s, dest, from, to, int64_t(s.bytes / dtype_size(from)), dest.data_as<uint8_t>() + first * dtype_size(to),
            slot.host + s.staging_offset};
  }

  // GPU: the DMA (straight into the destination when no conversion is needed, else into the
  // slot's scratch). CPU: the whole delivery.
  void copy(const Target& t, Slot& slot) {
    if (t.dest.device() == Device::cpu) {
      const Tensor out = Tensor::wrap(t.dst, {t.n}, t.to, Device::cpu);
      if (t.from == t.to) {
        std::memcpy(t.dst, t.staged, t.s.bytes);
        if (is_float(t.to)) cpu_counts_[t.s.source] += count_nonfinite_ref(out);
      } else {
        cpu_counts_[t.s.source] += convert_dtype_ref(Tensor::wrap(t.staged, {t.n}, t.from, Device::cpu), out);
      }
      return;
    }
    void* to = t.dst;
    if (t.from != t.to) {
      if (!slot.scratch.defined()) slot.scratch = Tensor::empty({int64_t(chunk_)}, DType::u8, Device::cuda);
      to = slot.scratch.data_as<uint8_t>() + t.s.staging_offset;
    }
    CUDA_CHECK(cudaMemcpyAsync(to, t.staged, t.s.bytes, cudaMemcpyHostToDevice, *copy_));
  }

  // GPU, on the work stream once the chunk's DMAs are done: convert, or check the copy.
  void finish(const Target& t, const Slot& slot) {
    if (t.dest.device() == Device::cpu) return;
    const Tensor out = Tensor::wrap(t.dst, {t.n}, t.to, Device::cuda);
    int* count = gpu_counts_.data_as<int>() + t.s.source;
    if (t.from == t.to) {
      if (is_float(t.to)) count_nonfinite(out, *work_, count);
      return;
    }
    const Tensor staged = Tensor::wrap(slot.scratch.data_as<uint8_t>() + t.s.staging_offset, {t.n}, t.from, Device::cuda);
    convert_dtype(staged, out, *work_, count);
  }

  size_t chunk_;
  const std::vector<std::vector<Source>>& layers_;
  std::vector<Chunk> chunks_;
  std::vector<size_t> first_chunk_;  // [layers + 1]: layer l's chunks are [first_chunk_[l], first_chunk_[l + 1])
  WorkerPool pool_;
  LoadReport& report_;
  int device_ = 0;
  std::optional<Stream> copy_, work_;
  std::optional<HostStaging> host_;
  std::vector<Slot> slots_;
  Tensor gpu_counts_, host_counts_;  // [sources] i32 non-finite counts
  std::vector<int64_t> cpu_counts_;
  // Between the gatherer and the loading thread: chunks [0, gathered_) are in their slots,
  // chunks [0, issued_) have been moved out (on the GPU: queued, their slot's `done` recorded).
  std::mutex mutex_;
  std::condition_variable changed_;
  size_t gathered_ = 0, issued_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
  std::thread gatherer_;  // last: started when everything above exists
};

// Memory limit, peak reset and the numbers of the final report.
class GpuAccounting {
 public:
  explicit GpuAccounting(const LoadOptions& o) : gpu_(cuda_available()) {
    if (!gpu_) return;
    device_ = current_device();
    if (o.gpu_memory_limit > 0) set_device_memory_limit(device_, o.gpu_memory_limit);
    reset_device_memory_peak(device_);
  }
  void fill(LoadReport& r) const {
    if (!gpu_) return;
    const DeviceMemoryStats s = device_memory_stats(device_);
    r.peak_gpu_bytes = s.peak;
    r.resident_gpu_bytes = s.in_use;
  }

 private:
  bool gpu_;
  int device_ = 0;
};

void summarize(const LoadReport& r, const std::string& what, const LoadOptions& o) {
  if (o.quiet) return;
  log_info(what, ": ", r.tensors, " tensors, ", double(r.bytes) / 1e9, " GB in ", r.seconds, " s (", r.gb_per_s(),
           " GB/s); peak GPU memory ", double(r.peak_gpu_bytes) / kGiB, " GiB, resident ",
           double(r.resident_gpu_bytes) / kGiB, " GiB");
}

void warn_unexpected(const std::vector<std::string>& names, const std::string& path) {
  if (names.empty()) return;
  std::string list;
  for (size_t i = 0; i < names.size() && i < 20; ++i) list += (i ? ", " : "") + names[i];
  if (names.size() > 20) list += cat(", ... (", names.size() - 20, " more)");
  log_warn(path, ": ", names.size(), " tensor(s) not used by the model: ", list);
}

// A spec resolved against the checkpoint.
struct Planned {
  const CheckpointTensor* tensor;  // null: optional and absent
  FillGeometry geometry;
};

// Streams layer after layer; returns when every layer has finished loading. The staging area
// lives only as long as this call.
void stream_layers(std::span<Loadable* const> layers, const std::vector<std::vector<WeightSpec>>& specs,
                   const std::vector<std::vector<Planned>>& plans, const LoadOptions& options,
                   LoadProgress& progress, LoadReport& report) {
  std::vector<std::vector<Source>> sources(layers.size());
  std::vector<std::vector<size_t>> spec_of(layers.size());  // sources[l][j] reads specs[l][spec_of[l][j]]
  for (size_t l = 0; l < layers.size(); ++l)
    for (size_t i = 0; i < specs[l].size(); ++i)
      if (const CheckpointTensor* t = plans[l][i].tensor) {
        sources[l].push_back({cat("tensor ", specs[l][i].name, " in ", t->file->path()), t->data(), *t->info->dtype,
                              plans[l][i].geometry});
        spec_of[l].push_back(i);
      }
  Streamer streamer(options, sources, report);
  for (size_t l = 0; l < layers.size(); ++l) {
    Loadable& layer = *layers[l];
    {
      const ScopedTimer timer(report.layer_seconds);
      layer.begin_loading();
    }
    std::vector<Tensor> dests;
    size_t bytes = 0;
    for (size_t j = 0; j < sources[l].size(); ++j) {
      const WeightSpec& spec = specs[l][spec_of[l][j]];
      const CheckpointTensor& t = *plans[l][spec_of[l][j]].tensor;
      dests.push_back(checked_dest(layer, spec_of[l][j], spec));
      MXMOE_CHECK((is_float(sources[l][j].dtype) && is_float(dests.back().dtype())) || sources[l][j].dtype == dests.back().dtype(),
                  "tensor ", spec.name, " in ", t.file->path(), " is ", t.info->dtype_name, " but ", layer.loadable_name(),
                  " wants ", dtype_name(dests.back().dtype()));
      bytes += sources[l][j].bytes();
    }
    streamer.load_layer(l, dests);
    {
      const ScopedTimer timer(report.layer_seconds);
      layer.finish_loading();
    }
    report.bytes += bytes;
    progress.advance(dests.size(), bytes);
  }
}

}  // namespace

LoadReport load_weights(const Checkpoint& checkpoint, std::span<Loadable* const> layers, const LoadOptions& options) {
  // Check every spec against the checkpoint before moving a byte: a mismatch fails in milliseconds.
  std::vector<std::vector<WeightSpec>> specs;
  std::vector<std::vector<Planned>> plans;
  std::set<std::string> wanted;
  LoadReport report;
  size_t total_bytes = 0;
  for (Loadable* layer : layers) {
    specs.push_back(layer->weight_specs());
    plans.emplace_back();
    for (const WeightSpec& spec : specs.back()) {
      wanted.insert(spec.name);
      const CheckpointTensor* t = checkpoint.find(spec.name);
      MXMOE_CHECK(t || spec.optional, layer->loadable_name(), ": tensor ", spec.name, " is missing from checkpoint ",
                  checkpoint.path());
      const FillGeometry g = slice_geometry(spec, layer->loadable_name());
      if (t) {
        const TensorInfo& info = *t->info;
        MXMOE_CHECK(info.shape == spec.shape, "tensor ", spec.name, " in ", t->file->path(), " has shape ",
                    shape_str(info.shape), " but ", layer->loadable_name(), " expects ", shape_str(spec.shape),
                    " (from config.json)");
        MXMOE_CHECK(info.dtype.has_value(), "tensor ", spec.name, " in ", t->file->path(), " has dtype ",
                    info.dtype_name, ", which the engine cannot load (BF16, F16, F32; F8_E4M3 and U8 as they are)");
        total_bytes += size_t(g.outer * g.length * g.inner) * info.element_size;
        ++report.tensors;
      }
      plans.back().push_back({t, g});
    }
  }
  for (const std::string& name : checkpoint.names())
    if (!wanted.count(name)) report.unexpected.push_back(name);
  warn_unexpected(report.unexpected, checkpoint.path());

  GpuAccounting accounting(options);
  LoadProgress progress(report.tensors, total_bytes, options.quiet);
  stream_layers(layers, specs, plans, options, progress, report);
  report.seconds = progress.seconds();
  accounting.fill(report);
  summarize(report, cat("loaded ", checkpoint.path()), options);
  return report;
}

LoadReport load_dummy_weights(std::span<Loadable* const> layers, const LoadOptions& options) {
  GpuAccounting accounting(options);
  std::optional<Stream> stream;
  if (cuda_available()) stream.emplace();
  LoadReport report;
  const auto start = std::chrono::steady_clock::now();
  for (Loadable* layer : layers) {
    const std::vector<WeightSpec> specs = layer->weight_specs();
    layer->begin_loading();
    for (size_t i = 0; i < specs.size(); ++i) {
      const WeightSpec& spec = specs[i];
      const Tensor dest = checked_dest(*layer, i, spec);
      MXMOE_CHECK(is_float(dest.dtype()), layer->loadable_name(), ": dummy weights for ", spec.name,
                  " need a float destination, got ", dtype_name(dest.dtype()));
      const NormalFill fill{mix64(options.seed ^ name_hash(spec.name)), spec.dummy_mean, spec.dummy_std,
                            slice_geometry(spec, layer->loadable_name())};
      if (dest.device() == Device::cuda) {
        MXMOE_CHECK(stream, "a layer asked for weights on the GPU but no GPU is available");
        fill_normal(dest, fill, *stream);
      } else {
        fill_normal_ref(dest, fill);
      }
      report.bytes += dest.nbytes();
      ++report.tensors;
    }
    if (stream) stream->synchronize();
    layer->finish_loading();
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  accounting.fill(report);
  summarize(report, "generated dummy weights", options);
  return report;
}

LoadFormat parse_load_format(std::string_view name) {
  if (name == "safetensors" || name == "auto") return LoadFormat::safetensors;
  if (name == "dummy") return LoadFormat::dummy;
  fail("unknown load format \"", name, "\" (supported: safetensors, auto, dummy)");
}

LoadReport load_weights(const std::string& path, LoadFormat format, std::span<Loadable* const> layers,
                        const LoadOptions& options) {
  if (format == LoadFormat::dummy) return load_dummy_weights(layers, options);
  return load_weights(Checkpoint(path), layers, options);
}

}  // namespace mxmoe
