#include "engine/tensor_parallel.h"

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <tuple>

#include "engine/cpu_communicator.h"
#include "engine/cuda_check.h"
#include "engine/error.h"
#include "engine/nccl_communicator.h"

namespace mxmoe {

// One persistent thread per local rank; run() hands all of them the same job and waits. The first
// failure is kept: it is rethrown by that run() and by every later one.
class TensorParallelRuntime::Workers {
 public:
  Workers(int count, Device device, std::function<void(const std::string&)> on_failure)
      : device_(device), on_failure_(std::move(on_failure)) {
    for (int i = 0; i < count; ++i) threads_.emplace_back([this, i] { loop(i); });
  }

  ~Workers() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

  // ignore_failure: run even after a failure and rethrow nothing (tear-down).
  void run(const std::function<void(int)>& fn, bool ignore_failure = false) {
    std::unique_lock lock(mu_);
    if (error_ && !ignore_failure) std::rethrow_exception(error_);
    job_ = &fn;
    busy_ = int(threads_.size());
    ++epoch_;
    wake_.notify_all();
    done_.wait(lock, [&] { return busy_ == 0; });
    job_ = nullptr;
    if (error_ && !ignore_failure) std::rethrow_exception(error_);
  }

 private:
  void loop(int i) {
    uint64_t seen = 0;
    while (true) {
      const std::function<void(int)>* job = nullptr;
      {
        std::unique_lock lock(mu_);
        wake_.wait(lock, [&] { return stop_ || epoch_ != seen; });
        if (stop_) return;
        seen = epoch_;
        job = job_;
      }
      try {
        if (device_ == Device::cuda) CUDA_CHECK(cudaSetDevice(i));
        (*job)(i);
      } catch (...) {
        bool first = false;
        {
          std::lock_guard lock(mu_);
          first = !error_;
          if (first) error_ = std::current_exception();
        }
        if (first) on_failure_(cat("local rank ", i, " failed: ", message_of(std::current_exception())));
      }
      std::lock_guard lock(mu_);
      if (--busy_ == 0) done_.notify_all();
    }
  }

  Device device_;
  std::function<void(const std::string&)> on_failure_;
  std::mutex mu_;
  std::condition_variable wake_, done_;
  const std::function<void(int)>* job_ = nullptr;
  uint64_t epoch_ = 0;
  int busy_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
  std::vector<std::thread> threads_;
};

// The first local rank's on_token answers, in call order, for the other ranks of this process.
struct TensorParallelRuntime::Decisions {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::tuple<size_t, int32_t, bool>> log;  // (prompt, token, keep going)
  std::string aborted;                                 // non-empty: the group failed

  void abort(const std::string& reason) {
    {
      std::lock_guard lock(mu);
      if (aborted.empty()) aborted = reason;
    }
    cv.notify_all();
  }
};

TensorParallelRuntime::TensorParallelRuntime(const TensorParallelOptions& options)
    : config_(load_model_config(options.model_dir)), device_(options.model.device) {
  const int n = options.local_ranks;
  const Device device = options.model.device;
  MXMOE_CHECK(n >= 1, "tensor parallelism: local ranks must be >= 1, got ", n);
  const int nnodes = options.dist_init ? options.dist_init->nnodes : 1;
  world_size_ = n * nnodes;
  first_rank_ = options.dist_init ? options.dist_init->node_rank * n : 0;
  MXMOE_CHECK(options.kv_cache.num_blocks > 0 || !options.dist_init,
              "multi-process tensor parallelism needs an explicit KV cache size (num_blocks) so that every rank has "
              "the same blocks");

  std::vector<Communicator*> comms(size_t(n), nullptr);
  abort_comms_ = [](const std::string&) {};
  if (world_size_ > 1 || options.communicator_for_one_rank) {
    if (device == Device::cpu) {
      MXMOE_CHECK(!options.dist_init, "multi-process tensor parallelism (--dist-init) needs the GPU backend");
      auto group = std::make_shared<std::vector<std::unique_ptr<CpuCommunicator>>>(CpuCommunicator::create_group(n));
      for (int i = 0; i < n; ++i) comms[size_t(i)] = (*group)[size_t(i)].get();
      abort_comms_ = [g = group.get()](const std::string& reason) { g->front()->abort(reason); };
      comms_ = group;
    } else {
      int visible = 0;
      CUDA_CHECK(cudaGetDeviceCount(&visible));
      MXMOE_CHECK(visible >= n, "tensor parallelism over ", n, " GPUs per process, but ", visible,
                  " GPU(s) are visible");
      std::vector<int> devices(static_cast<size_t>(n));
      for (int i = 0; i < n; ++i) devices[size_t(i)] = i;
      auto group = options.dist_init ? std::make_shared<NcclGroup>(nccl_group_for_node(*options.dist_init, devices))
                                     : std::make_shared<NcclGroup>(devices);
      for (int i = 0; i < n; ++i) comms[size_t(i)] = &group->local(i);
      abort_comms_ = [g = group.get()](const std::string&) { g->abort(); };
      comms_ = group;
    }
  }
  for (int i = 0; i < n; ++i) {
    ranks_.push_back(std::make_unique<Rank>());
    ranks_.back()->local = i;
    ranks_.back()->global = first_rank_ + i;
    ranks_.back()->comm = comms[size_t(i)];
  }
  workers_ = std::make_unique<Workers>(n, device, [this](const std::string& reason) { abort(reason); });

  run_on_ranks([&](Rank& r) {
    ModelOptions model = options.model;
    model.comm = r.comm;
    r.model = make_causal_lm(config_, model);
    LoadOptions load = options.load;
    load.quiet = load.quiet || r.global != 0;  // one progress bar
    if (load.copy_threads == 0)  // the ranks load at once: share the hardware threads among them
      load.copy_threads = std::max(1, int(std::min(std::thread::hardware_concurrency(), 32u)) / n);
    load_weights(options.model_dir, options.load_format, r.model->loadables(), load);
    KvCacheConfig kv = r.model->kv_cache_config();  // this rank's KV heads
    kv.block_size = options.kv_cache.block_size;
    kv.num_blocks = options.kv_cache.num_blocks;
    kv.memory_fraction = options.kv_cache.memory_fraction;
    r.cache = std::make_unique<KvCache>(kv, device);
  });
  // num_blocks 0: each rank sized its pool from its own free memory; all take the smallest.
  int64_t blocks = ranks_.front()->cache->num_blocks();
  for (const auto& r : ranks_) blocks = std::min(blocks, r->cache->num_blocks());
  run_on_ranks([&](Rank& r) {
    if (r.cache->num_blocks() != blocks) {
      KvCacheConfig kv = r.cache->config();
      kv.num_blocks = blocks;
      r.cache.reset();  // its memory first
      r.cache = std::make_unique<KvCache>(kv, device);
    }
    r.generator = std::make_unique<Generator>(*r.model, *r.cache, options.generator);
  });
}

TensorParallelRuntime::~TensorParallelRuntime() {
  // Each rank's state goes on its own thread (its device current), before the communicators.
  workers_->run(
      [&](int i) {
        Rank& r = *ranks_[size_t(i)];
        r.generator.reset();
        r.cache.reset();
        r.model.reset();
      },
      true);
  workers_.reset();
}

void TensorParallelRuntime::abort(const std::string& reason) {
  abort_comms_(reason);
  std::lock_guard lock(decisions_mu_);
  if (decisions_) decisions_->abort(reason);
}

void TensorParallelRuntime::run_on_ranks(const std::function<void(Rank&)>& fn) {
  workers_->run([&](int i) { fn(*ranks_[size_t(i)]); });
}

std::vector<Generation> TensorParallelRuntime::generate(const std::vector<std::vector<int32_t>>& prompts,
                                                        const GenerationOptions& options,
                                                        const TokenCallback& on_token) {
  Decisions decisions;
  {
    std::lock_guard lock(decisions_mu_);
    decisions_ = &decisions;
  }
  struct Clear {
    TensorParallelRuntime& runtime;
    ~Clear() {
      std::lock_guard lock(runtime.decisions_mu_);
      runtime.decisions_ = nullptr;
    }
  } clear{*this};

  std::vector<std::vector<Generation>> out(ranks_.size());
  run_on_ranks([&](Rank& r) {
    size_t next = 0;  // this rank's next on_token call
    const TokenCallback first = [&](size_t prompt, int32_t token) {
      const bool keep = on_token ? on_token(prompt, token) : true;
      {
        std::lock_guard lock(decisions.mu);
        decisions.log.emplace_back(prompt, token, keep);
      }
      decisions.cv.notify_all();
      return keep;
    };
    const TokenCallback follower = [&](size_t prompt, int32_t token) {
      std::unique_lock lock(decisions.mu);
      decisions.cv.wait(lock, [&] { return decisions.log.size() > next || !decisions.aborted.empty(); });
      MXMOE_CHECK(decisions.aborted.empty(), "tensor parallel group aborted: ", decisions.aborted);
      const auto [p, t, keep] = decisions.log[next++];
      MXMOE_CHECK(p == prompt && t == token, "tensor parallel ranks diverged: rank ", r.global, " sampled token ",
                  token, " for prompt ", prompt, " where rank ", first_rank_, " sampled token ", t, " for prompt ", p);
      return keep;
    };
    out[size_t(r.local)] = r.generator->generate(prompts, options, r.local == 0 ? first : follower);
  });
  for (size_t i = 1; i < out.size(); ++i)
    for (size_t p = 0; p < prompts.size(); ++p)
      MXMOE_CHECK(out[i][p].tokens == out[0][p].tokens && out[i][p].finish == out[0][p].finish,
                  "tensor parallel ranks diverged: rank ", ranks_[i]->global, " generated other tokens than rank ",
                  first_rank_, " for prompt ", p);
  return out[0];
}

}  // namespace mxmoe
