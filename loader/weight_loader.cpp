#include "loader/weight_loader.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
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
constexpr size_t kPieceBytes = 1 << 20;  // unit of parallel copying

bool is_float(DType t) { return t == DType::f32 || t == DType::bf16 || t == DType::f16; }

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

// One tensor slice to move from the mmap into its destination.
struct Job {
  std::string where;  // "tensor X in file F"
  const uint8_t* src;
  DType src_dtype;
  FillGeometry g;
  Tensor dest;
  size_t bytes() const { return size_t(g.outer * g.length * g.inner) * dtype_size(src_dtype); }
};

// The staging pipeline: chunks of packed slice bytes go mmap -> staging (worker threads) ->
// destination (DMA on the copy stream, then the conversion / NaN-check kernels on a second
// stream so the next DMA never waits for a kernel launch; or CPU conversion), with
// `staging_buffers` chunks in flight.
class Streamer {
 public:
  explicit Streamer(const LoadOptions& o)
      : chunk_(std::max(kAlign, o.staging_bytes / kAlign * kAlign)),
        pool_(o.copy_threads > 0 ? o.copy_threads : int(std::clamp(std::thread::hardware_concurrency(), 1u, 8u))) {
    const bool gpu = cuda_available();
    if (gpu) {
      copy_.emplace();
      work_.emplace();
    }
    for (int i = 0; i < std::max(1, o.staging_buffers); ++i) {
      Slot s;
      s.host = gpu ? Tensor::empty_pinned({int64_t(chunk_)}, DType::u8) : Tensor::empty({int64_t(chunk_)}, DType::u8, Device::cpu);
      if (gpu) {
        s.copied = std::make_unique<Event>(cudaEventDisableTiming);
        s.done = std::make_unique<Event>(cudaEventDisableTiming);
      }
      slots_.push_back(std::move(s));
    }
  }

  // Moves every job's bytes into its destination; returns when they are there. NaN/Inf in a
  // float destination is an error naming the tensor.
  void load_layer(const std::vector<Job>& jobs) {
    jobs_ = &jobs;
    cpu_counts_.assign(jobs.size(), 0);
    const bool any_gpu = std::any_of(jobs.begin(), jobs.end(), [](const Job& j) { return j.dest.device() == Device::cuda; });
    if (any_gpu) {
      MXMOE_CHECK(copy_, "a layer asked for weights on the GPU but no GPU is available");
      if (!gpu_counts_.defined() || gpu_counts_.numel() < int64_t(jobs.size())) {
        gpu_counts_ = Tensor::empty({int64_t(jobs.size())}, DType::i32, Device::cuda);
        host_counts_ = Tensor::empty_pinned({int64_t(jobs.size())}, DType::i32);
      }
      CUDA_CHECK(cudaMemsetAsync(gpu_counts_.data(), 0, jobs.size() * sizeof(int), *work_));
    }
    std::vector<Segment> segments;
    size_t used = 0;  // bytes of the current chunk
    for (size_t j = 0; j < jobs.size(); ++j) {
      const size_t total = jobs[j].bytes();
      for (size_t off = 0; off < total;) {
        used = round_up(int64_t(used), int64_t(kAlign));
        size_t len = std::min(total - off, chunk_ - std::min(used, chunk_));
        if (off + len < total) len = len / kAlign * kAlign;  // a piece that is continued ends aligned
        if (len == 0) {
          flush(segments);
          used = 0;
          continue;
        }
        segments.push_back({j, off, len, used});
        off += len;
        used += len;
      }
    }
    flush(segments);
    if (any_gpu) {
      CUDA_CHECK(cudaMemcpyAsync(host_counts_.data(), gpu_counts_.data(), jobs.size() * sizeof(int),
                                 cudaMemcpyDeviceToHost, *work_));
      work_->synchronize();  // it waited for every copy too
    }
    for (size_t j = 0; j < jobs.size(); ++j) {
      const bool gpu = jobs[j].dest.device() == Device::cuda;
      const int64_t bad = gpu ? host_counts_.data_as<int>()[j] : cpu_counts_[j];
      MXMOE_CHECK(bad == 0, jobs[j].where, " holds ", bad, " NaN/Inf value(s)");
    }
  }

 private:
  struct Slot {
    Tensor host;     // [chunk] u8, pinned when a GPU is present
    Tensor scratch;  // [chunk] u8 on the GPU, allocated on first conversion
    std::unique_ptr<Event> copied;  // on the copy stream: this chunk's DMAs are done
    std::unique_ptr<Event> done;    // on the work stream: its kernels too, the slot is free
  };
  struct Segment {
    size_t job, offset, bytes, staging_offset;  // bytes [offset, offset+bytes) of the job's packed slice
  };
  struct Piece {
    uint8_t* dst;
    const uint8_t* src;
    size_t bytes;
  };

  void flush(std::vector<Segment>& segments) {
    if (segments.empty()) return;
    Slot& slot = slots_[next_slot_++ % slots_.size()];
    if (slot.done) slot.done->synchronize();
    pack(segments, slot.host.data_as<uint8_t>());
    for (const Segment& s : segments) copy(s, slot);
    if (slot.done) {
      slot.copied->record(*copy_);
      CUDA_CHECK(cudaStreamWaitEvent(*work_, *slot.copied));
    }
    for (const Segment& s : segments) finish(s, slot);
    if (slot.done) slot.done->record(*work_);
    segments.clear();
  }

  // Gathers the segments' bytes from the mmap into the staging buffer, in parallel.
  void pack(const std::vector<Segment>& segments, uint8_t* staging) {
    pieces_.clear();
    for (const Segment& s : segments) {
      const Job& job = (*jobs_)[s.job];
      const size_t esize = dtype_size(job.src_dtype);
      const size_t row = size_t(job.g.length * job.g.inner) * esize;  // slice bytes per outer index
      const size_t pitch = size_t(job.g.full * job.g.inner) * esize;
      const uint8_t* first = job.src + size_t(job.g.begin * job.g.inner) * esize;
      for (size_t p = s.offset; p < s.offset + s.bytes;) {
        const size_t r = p / row, within = p % row;
        const size_t n = std::min({row - within, s.offset + s.bytes - p, kPieceBytes});
        pieces_.push_back({staging + s.staging_offset + (p - s.offset), first + r * pitch + within, n});
        p += n;
      }
    }
    pool_.run(pieces_.size(), [&](size_t i) { std::memcpy(pieces_[i].dst, pieces_[i].src, pieces_[i].bytes); });
  }

  // Where segment s goes: its destination elements, and the staged bytes.
  struct Target {
    const Job& job;
    DType from, to;
    int64_t n;        // elements
    void* dst;        // first destination element
    uint8_t* staged;  // in the slot's host buffer
  };
  Target target(const Segment& s, const Slot& slot) const {
    const Job& job = (*jobs_)[s.job];
    const DType from = job.src_dtype, to = job.dest.dtype();
    const size_t first = s.offset / dtype_size(from);
    return {job, from, to, int64_t(s.bytes / dtype_size(from)), job.dest.data_as<uint8_t>() + first * dtype_size(to),
            slot.host.data_as<uint8_t>() + s.staging_offset};
  }

  // GPU: the DMA (straight into the destination when no conversion is needed, else into the
  // slot's scratch). CPU: the whole delivery.
  void copy(const Segment& s, Slot& slot) {
    const Target t = target(s, slot);
    if (t.job.dest.device() == Device::cpu) {
      const Tensor out = Tensor::wrap(t.dst, {t.n}, t.to, Device::cpu);
      if (t.from == t.to) {
        std::memcpy(t.dst, t.staged, s.bytes);
        if (is_float(t.to)) cpu_counts_[s.job] += count_nonfinite_ref(out);
      } else {
        cpu_counts_[s.job] += convert_dtype_ref(Tensor::wrap(t.staged, {t.n}, t.from, Device::cpu), out);
      }
      return;
    }
    void* to = t.dst;
    if (t.from != t.to) {
      if (!slot.scratch.defined()) slot.scratch = Tensor::empty({int64_t(chunk_)}, DType::u8, Device::cuda);
      to = slot.scratch.data_as<uint8_t>() + s.staging_offset;
    }
    CUDA_CHECK(cudaMemcpyAsync(to, t.staged, s.bytes, cudaMemcpyHostToDevice, *copy_));
  }

  // GPU, on the work stream once the chunk's DMAs are done: convert, or check the copy.
  void finish(const Segment& s, const Slot& slot) {
    const Target t = target(s, slot);
    if (t.job.dest.device() == Device::cpu) return;
    const Tensor out = Tensor::wrap(t.dst, {t.n}, t.to, Device::cuda);
    int* count = gpu_counts_.data_as<int>() + s.job;
    if (t.from == t.to) {
      if (is_float(t.to)) count_nonfinite(out, *work_, count);
      return;
    }
    const Tensor staged = Tensor::wrap(slot.scratch.data_as<uint8_t>() + s.staging_offset, {t.n}, t.from, Device::cuda);
    convert_dtype(staged, out, *work_, count);
  }

  size_t chunk_;
  WorkerPool pool_;
  std::optional<Stream> copy_, work_;
  std::vector<Slot> slots_;
  size_t next_slot_ = 0;
  const std::vector<Job>* jobs_ = nullptr;
  std::vector<Piece> pieces_;
  Tensor gpu_counts_, host_counts_;  // [jobs] i32 non-finite counts
  std::vector<int64_t> cpu_counts_;
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
  Streamer streamer(options);
  for (size_t l = 0; l < layers.size(); ++l) {
    Loadable& layer = *layers[l];
    layer.begin_loading();
    std::vector<Job> jobs;
    size_t bytes = 0;
    for (size_t i = 0; i < specs[l].size(); ++i) {
      const Planned& p = plans[l][i];
      if (!p.tensor) continue;
      const WeightSpec& spec = specs[l][i];
      const DType from = *p.tensor->info->dtype;
      Tensor dest = checked_dest(layer, i, spec);
      MXMOE_CHECK((is_float(from) && is_float(dest.dtype())) || from == dest.dtype(), "tensor ", spec.name, " in ",
                  p.tensor->file->path(), " is ", p.tensor->info->dtype_name, " but ", layer.loadable_name(),
                  " wants ", dtype_name(dest.dtype()));
      jobs.push_back({cat("tensor ", spec.name, " in ", p.tensor->file->path()), p.tensor->data(), from, p.geometry,
                      std::move(dest)});
      bytes += jobs.back().bytes();
    }
    streamer.load_layer(jobs);
    layer.finish_loading();
    report.bytes += bytes;
    progress.advance(jobs.size(), bytes);
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
