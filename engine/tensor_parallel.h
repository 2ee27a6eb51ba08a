#pragma once
// The tensor-parallel runtime: one process drives its local ranks, one worker thread per rank
// (per GPU, or simulated CPU ranks), and every rank runs the same SPMD loop over its own shard.
//
//   TensorParallelOptions o;  o.model_dir = dir;  o.local_ranks = 2;  o.kv_cache.num_blocks = 512;
//   TensorParallelRuntime tp(o);                   // communicators, threads, each rank loads its shard
//   tp.generate({ids}, gen, [](size_t, int32_t token) { ...; return true; });
//
// Rank i of this process is global rank first_rank() + i on GPU i (cuda: GPUs 0 .. local_ranks-1
// must be visible). Each worker thread sets its device, builds its model with its communicator
// (ModelOptions::comm; the loader reads only the rank's slices), its KV cache (the same block count
// on every rank, so the host-side block allocators hand out the same block ids) and its Generator.
//
// Lockstep: every rank runs the same host code on the same inputs, so it issues the same steps and
// collectives in the same order; the collectives are the only synchronization between ranks during
// a step. After the logits all-gather every rank holds the same logits bit for bit, and the sampler
// is bit-reproducible (kernels/sampling.h: fixed-point sums, counter-based random numbers), so
// every rank samples the same token and decides the same way to stop. generate() checks that: the
// first local rank runs the caller's on_token and the others wait for its answer, compare their
// own token with its token (a difference is an Error, "ranks diverged") and return its answer, so a
// stop string or a cancellation ends the sequence on every rank in the same step.
//
// Failure: a rank that throws aborts the group (the CPU communicator wakes every rank waiting in a
// collective with an Error; the waits of generate() end too), and the first error — the root
// cause, not the aborts it caused — is rethrown to the caller; the runtime is then unusable (every
// later call throws that error). On GPUs the abort is ncclCommAbort on every local communicator:
// a rank failing between two collectives (an out-of-memory on one GPU) releases the others waiting
// in the device. Errors that every rank hits alike (bad input, a full KV cache) fail all ranks at
// the same point and return.
//
// Multi-process / multi-node (dist_init): every process runs this runtime with the same options;
// process (node) k drives global ranks k·local_ranks .. (k+1)·local_ranks - 1 and node 0 hands out
// the ncclUniqueId over TCP (engine/tcp_bootstrap.h). on_token then runs in every process (on its
// first local rank) and must decide the same way in all of them: a function of the tokens, like
// stop strings; print from one process only.
//
// Two runtimes over the same GPUs (in one process or several) must not work at the same time, nor
// one be built while the other works: NCCL kernels of two communicators on one GPU wait for their
// peers and can deadlock (NCCL's rule for concurrent communicators). One Engine holds one runtime.
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/communicator.h"
#include "engine/generator.h"
#include "engine/tcp_bootstrap.h"
#include "loader/weight_loader.h"
#include "models/model.h"

namespace mxmoe {

struct TensorParallelOptions {
  std::string model_dir;                       // Hugging Face checkpoint directory (config.json, safetensors)
  LoadFormat load_format = LoadFormat::safetensors;
  ModelOptions model;                          // quant and device; comm is set per rank
  LoadOptions load;                            // gpu_memory_limit caps each rank's GPU
  KvCacheConfig kv_cache;                      // block_size and num_blocks (the same on every rank; 0, one
                                               // process on GPUs: the fewest that memory_fraction gives a rank)
  GeneratorOptions generator;
  int local_ranks = 1;                         // ranks in this process: GPUs 0 .. local_ranks-1, or CPU threads
  std::optional<DistInit> dist_init;           // multi-process: this process is node dist_init->node_rank
  // A world of one rank runs the whole model without collectives unless this is set; then it gets
  // a communicator of size 1 (NCCL on the GPU) whose collectives are identities: the TP code path
  // on one device, for tests.
  bool communicator_for_one_rank = false;
};

class TensorParallelRuntime {
 public:
  // What one rank's thread works with; valid while the runtime lives.
  struct Rank {
    int local = 0, global = 0;  // index in this process, rank in the world
    Communicator* comm = nullptr;  // null in a world of one without communicator_for_one_rank
    std::unique_ptr<CausalLM> model;
    std::unique_ptr<KvCache> cache;
    std::unique_ptr<Generator> generator;
  };

  explicit TensorParallelRuntime(const TensorParallelOptions& options);
  ~TensorParallelRuntime();
  TensorParallelRuntime(const TensorParallelRuntime&) = delete;
  TensorParallelRuntime& operator=(const TensorParallelRuntime&) = delete;

  int local_size() const { return int(ranks_.size()); }
  int world_size() const { return world_size_; }
  int first_rank() const { return first_rank_; }
  const ModelConfig& config() const { return config_; }
  Device device() const { return device_; }
  const Rank& rank(int local) const { return *ranks_.at(size_t(local)); }
  // Between fan-outs (the rank threads idle), a caller may change a rank's state from its own
  // thread: the continuous-batching scheduler adds and frees KV cache sequences on every rank.
  Rank& rank(int local) { return *ranks_.at(size_t(local)); }

  // Per-step fan-out: runs fn(rank) on every local rank's thread at once (device set) and returns
  // when all are done. This is how a caller drives the ranks step by step (a continuous-batching
  // scheduler: each step, fn calls its rank's generator.step(...) and samples with the same
  // arguments on every rank; only the collectives inside forward() synchronize the ranks, so one
  // fan-out per step costs one host wake-up per rank). fn must issue the same collectives in the
  // same order on every rank. A throw aborts the group; the first error is rethrown here.
  void run_on_ranks(const std::function<void(Rank&)>& fn);

  // Generator::generate on every rank in lockstep (see the top of this file); returns the first
  // local rank's generations (every rank's are the same) and its statistics in stats().
  std::vector<Generation> generate(const std::vector<std::vector<int32_t>>& prompts, const GenerationOptions& options,
                                   const TokenCallback& on_token = {});
  const GenerationStats& stats() const { return ranks_.front()->generator->stats(); }

 private:
  class Workers;
  struct Decisions;
  void abort(const std::string& reason);

  ModelConfig config_;
  Device device_ = Device::cpu;
  int world_size_ = 1, first_rank_ = 0;
  std::shared_ptr<void> comms_;  // owns the communicators (a CPU group or an NCCL group)
  std::function<void(const std::string&)> abort_comms_;
  std::vector<std::unique_ptr<Rank>> ranks_;
  std::unique_ptr<Workers> workers_;
  std::mutex decisions_mu_;
  Decisions* decisions_ = nullptr;  // generate()'s, while it runs
};

}  // namespace mxmoe
