// bench: end-to-end generation speed of one model on one GPU, against speeds of light measured in
// the same process.
//
//   bench --config qwen3-30b-a3b|mixtral-8x7b|olmoe-1b-7b [--load-format dummy]   (loader/configs)
//   bench -m DIR [--load-format safetensors|dummy]
//   options: --batch 1 --input-len 512 --output-len 256 --quantization mxfp8|bf16 --tp 1
//            --no-graphs --seed 0 --json FILE
//            --tp N: N GPUs of this host through the tensor-parallel runtime (engine/tensor_parallel.h);
//            --communicator: at --tp 1 too, an NCCL communicator of one rank (the tensor-parallel code
//            path on one GPU)
//            --profile-step: at the end one more decode step runs inside an NVTX range
//            "decode_step" (for `ncu --nvtx --nvtx-include decode_step/`, apps/bench_profile.py)
//
// Prompts are random token ids (no tokenizer needed), decoding is greedy and never stops early.
// One short warm-up generation of the same shapes runs first (CUDA graphs are captured, step
// memory grows), then the measured one. Reported: load time, peak GPU memory (the engine's
// accounting), TTFT, prefill tok/s, decode ms per step and tok/s, and
//  - decode speed-of-light fraction: bytes a decode step must read / step time / copy bandwidth.
//    Bytes = every weight a step reads (MoE layers: only the experts the batch routes to, taken as
//    the expected number of distinct experts under uniform routing, E·(1 − (1 − k/E)^B)) + the KV
//    cache at the mean context of the decode phase. Copy bandwidth: a 1 GiB device-to-device copy
//    (bytes read + written), as every memory-bound kernel here is compared.
//  - prefill fraction of the bf16 compute speed of light: prefill flops (2 per active weight per
//    token, the LM head for the sampled rows only, causal attention 2·T²·heads·head_dim per layer)
//    / the cuBLASLt bf16 rate of an 8192³ GEMM / the prefill time.
// Under tensor parallelism every GPU reads 1/tp of the step's bytes and does 1/tp of the flops (the
// replicated routers and norms are small), so both fractions divide by tp GPUs' speed (copy and
// cuBLASLt rates measured on GPU 0). The collectives' share: one all-reduce of the [batch, hidden]
// bf16 residual costs `allreduce_us` (measured alone on the ranks' streams, graph-replayed), and a
// decode step runs 2 per layer + 1 (models/decoder.h), plus the logits all-gather.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include <nvtx3/nvToolsExt.h>

#include "apps/bench_util.h"
#include "engine/error.h"
#include "engine/generator.h"
#include "engine/log.h"
#include "engine/memory.h"
#include "engine/tensor_parallel.h"
#include "kernels/cublaslt_gemm.h"
#include "loader/weight_loader.h"
#include "models/model.h"

using namespace mxmoe;

namespace {

struct Args {
  std::string model, config, load_format, quantization = "mxfp8", json;
  int batch = 1, input_len = 512, output_len = 256, tp = 1;
  uint64_t seed = 0;
  bool graphs = true, profile_step = false, communicator = false;
};

constexpr const char* kUsage =
    "usage: bench (--config qwen3-30b-a3b|mixtral-8x7b|olmoe-1b-7b | -m DIR) [--load-format dummy|safetensors]\n"
    "             [--batch N] [--input-len N] [--output-len N] [--quantization mxfp8|bf16] [--tp N]\n"
    "             [--communicator] [--no-graphs] [--seed N] [--json FILE] [--profile-step]\n";

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&]() -> std::string {
      MXMOE_CHECK(i + 1 < argc, "option ", arg, " needs a value\n", kUsage);
      return argv[++i];
    };
    const auto count = [&](int lo) {
      const std::string v = value();
      char* end = nullptr;
      const long n = std::strtol(v.c_str(), &end, 10);
      MXMOE_CHECK(end && *end == '\0' && n >= lo && n <= (1 << 24), "option ", arg, ": expected an integer >= ", lo,
                  ", got '", v, "'");
      return int(n);
    };
    if (arg == "-m" || arg == "--model") a.model = value();
    else if (arg == "--config") a.config = value();
    else if (arg == "--load-format") a.load_format = value();
    else if (arg == "--quantization") a.quantization = value();
    else if (arg == "--json") a.json = value();
    else if (arg == "--batch") a.batch = count(1);
    else if (arg == "--input-len") a.input_len = count(1);
    else if (arg == "--output-len") a.output_len = count(2);
    else if (arg == "--tp") a.tp = count(1);
    else if (arg == "--seed") a.seed = uint64_t(count(0));
    else if (arg == "--no-graphs") a.graphs = false;
    else if (arg == "--communicator") a.communicator = true;
    else if (arg == "--profile-step") a.profile_step = true;
    else if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else {
      fail("unknown option ", arg, "\n", kUsage);
    }
  }
  MXMOE_CHECK(a.model.empty() != a.config.empty(), "give exactly one of -m DIR and --config NAME\n", kUsage);
  if (a.load_format.empty()) a.load_format = a.config.empty() ? "safetensors" : "dummy";
  MXMOE_CHECK(a.config.empty() || a.load_format == "dummy", "--config has no checkpoint: use --load-format dummy");
  return a;
}

// loader/configs/<file> in the source tree, found upward from the executable (as run-model finds
// the bundled model); a path to a config.json is taken as is.
std::string config_path(const std::string& name, const char* argv0) {
  if (std::filesystem::exists(name)) return name;
  const std::map<std::string, std::string> known = {{"qwen3-30b-a3b", "qwen3-30b-a3b.json"},
                                                    {"mixtral-8x7b", "mixtral-8x7b-v0.1.json"},
                                                    {"olmoe-1b-7b", "olmoe-1b-7b-0924.json"}};
  const auto it = known.find(name);
  MXMOE_CHECK(it != known.end(), "--config ", name, ": unknown (qwen3-30b-a3b, mixtral-8x7b, olmoe-1b-7b, or a path)");
  const std::filesystem::path exe = std::filesystem::weakly_canonical(std::filesystem::path(argv0));
  for (auto dir = exe.parent_path(); !dir.empty() && dir != dir.root_path(); dir = dir.parent_path())
    if (std::filesystem::exists(dir / "loader/configs" / it->second)) return (dir / "loader/configs" / it->second).string();
  fail("--config ", name, ": loader/configs/", it->second, " not found above ", exe.string());
}

constexpr int kTimedSteps = 32;  // back-to-back decode steps timed after the generation

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// What one token costs: weight bytes a decode step reads and flops per prefill token.
struct Cost {
  double shared_bytes = 0;       // read once per step whatever the batch: attention, dense MLPs, routers, norms
  double expert_bytes = 0;       // one routed expert of one MoE layer
  int64_t moe_layers = 0;
  double lm_head_bytes = 0;
  double flops_per_token = 0;    // 2 per active weight, LM head excluded
  double lm_head_flops = 0;      // per sampled row
};

Cost model_cost(const ModelConfig& c, const std::string& quantization) {
  const double lin = quantization == "mxfp8" ? 1.0 + 1.0 / 32 : 2.0;  // bytes per element
  const double h = double(c.hidden_size), hd = double(c.head_dim), nq = double(c.num_attention_heads),
               nkv = double(c.num_key_value_heads);
  Cost k;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    double elems = h * (nq + 2 * nkv) * hd + nq * hd * h;  // qkv, o_proj
    double active = elems;
    if (c.is_moe_layer(l)) {
      ++k.moe_layers;
      k.shared_bytes += 2.0 * h * double(c.num_experts);  // bf16 router
      active += double(c.num_experts_per_tok) * 3.0 * h * double(c.moe_intermediate_size) + h * double(c.num_experts);
      if (c.shared_expert_intermediate_size > 0) {
        elems += 3.0 * h * double(c.shared_expert_intermediate_size);
        active += 3.0 * h * double(c.shared_expert_intermediate_size);
        k.shared_bytes += 2.0 * h;  // bf16 shared-expert gate
      }
    } else {
      elems += 3.0 * h * double(c.intermediate_size);
      active += 3.0 * h * double(c.intermediate_size);
    }
    k.shared_bytes += elems * lin + 4.0 * h;  // + the norms
    k.flops_per_token += 2.0 * active;
  }
  k.expert_bytes = 3.0 * h * double(c.moe_intermediate_size) * lin;
  k.lm_head_bytes = 2.0 * h * double(c.vocab_size);  // bf16 LM head (the default)
  k.lm_head_flops = 2.0 * h * double(c.vocab_size);
  return k;
}

// One rank's measurements, taken on its own thread (device set).
struct RankTimes {
  double step_only_ms = 0;  // back-to-back decode steps
  double allreduce_us = 0;  // one all-reduce of the [batch, hidden] bf16 residual (0 without a communicator)
};

// Back-to-back decode steps through Generator::step, no sampling and no host sync between them:
// the step time when the host keeps ahead of the GPU (the rest of a generated token's time is
// sampling and its synchronization). Then, with --profile-step, one more inside an NVTX range.
// Every rank runs the same steps, so they issue the same collectives.
double time_decode_steps(TensorParallelRuntime::Rank& r, const std::vector<std::vector<int32_t>>& prompts,
                         bool profile_step) {
  Generator& generator = *r.generator;
  KvCache& cache = *r.cache;
  std::vector<int> seqs;
  std::vector<int32_t> decode_rows;
  for (const auto& p : prompts) {  // one prefill step per prompt
    seqs.push_back(cache.add_sequence());
    decode_rows.push_back(int32_t(decode_rows.size()));
    generator.step(std::span<const int>(&seqs.back(), 1), {p}, {int32_t(p.size()) - 1});
  }
  const std::vector<std::vector<int32_t>> next(prompts.size(), std::vector<int32_t>{1});
  for (int i = 0; i < 3; ++i) generator.step(seqs, next, decode_rows);  // warm-up, capture, replay
  Event start, stop;
  start.record(generator.stream());
  for (int i = 0; i < kTimedSteps; ++i) generator.step(seqs, next, decode_rows);
  stop.record(generator.stream());
  stop.synchronize();
  const double ms = stop.elapsed_since(start) / kTimedSteps;
  if (profile_step) {
    if (r.local == 0) nvtxRangePushA("decode_step");
    generator.step(seqs, next, decode_rows);
    CUDA_CHECK(cudaDeviceSynchronize());
    if (r.local == 0) nvtxRangePop();
  }
  for (int s : seqs) cache.free_sequence(s);
  return ms;
}

int run(int argc, char** argv) {
  const Args args = parse_args(argc, argv);
  MXMOE_CHECK(cuda_available(), "bench needs a CUDA device");
  set_log_level(LogLevel::warn);
  const std::string source = args.config.empty() ? args.model : config_path(args.config, argv[0]);
  const ModelConfig config = load_model_config(source);

  TensorParallelOptions options;
  options.model_dir = source;  // a checkpoint directory, or (dummy weights) a config.json
  options.load_format = parse_load_format(args.load_format);
  options.model.quant.scheme = args.quantization;
  options.model.device = Device::cuda;
  options.load.quiet = true;
  options.load.seed = args.seed;
  const int64_t max_len = args.input_len + std::max(args.output_len, kTimedSteps + 8);
  options.kv_cache.num_blocks =
      int64_t(args.batch) * ((max_len + options.kv_cache.block_size - 1) / options.kv_cache.block_size + 1);
  options.generator.cuda_graphs = args.graphs;
  options.local_ranks = args.tp;
  options.communicator_for_one_rank = args.communicator;
  for (int d = 0; d < args.tp; ++d) reset_device_memory_peak(d);
  const auto load_start = std::chrono::steady_clock::now();
  TensorParallelRuntime runtime(options);
  const double load_seconds = seconds_since(load_start);
  const TensorParallelRuntime::Rank& rank0 = runtime.rank(0);
  const double weights_gib =  // per GPU: what rank 0 holds besides its KV cache
      double(device_memory_stats(0).in_use - rank0.cache->bytes_per_block() * size_t(rank0.cache->num_blocks())) /
      (1ull << 30);

  // References on GPU 0, in this process (the main thread's device).
  CUDA_CHECK(cudaSetDevice(0));
  Stream stream;
  const double copy_gbs = bench::copy_bandwidth_gbs(stream);
  double bf16_tflops = 0;
  {
    const int64_t n = 8192;
    const Tensor x = bench::random_bf16({n, n}, 1, 1.f, stream), w = bench::random_bf16({n, n}, 2, 1.f, stream);
    const Tensor y = Tensor::empty({n, n}, DType::bf16, Device::cuda);
    const double ms = bench::median_ms(stream, [&](int) { cublaslt_gemm_bf16(x, w, nullptr, y, stream); }, 5, 20);
    bf16_tflops = 2.0 * double(n * n * n) / (ms * 1e-3) / 1e12;
  }

  std::mt19937_64 rng(args.seed + 1);
  std::uniform_int_distribution<int32_t> token(0, int32_t(config.vocab_size - 1));
  std::vector<std::vector<int32_t>> prompts(size_t(args.batch), std::vector<int32_t>(size_t(args.input_len)));
  for (auto& p : prompts)
    for (int32_t& t : p) t = token(rng);
  GenerationOptions gen;
  gen.sampling.temperature = 0;  // greedy
  gen.max_new_tokens = 4;        // warm-up: prefill + a bucket's eager step, capture and a replay
  runtime.generate(prompts, gen);
  const GenerationStats before = runtime.stats();
  gen.max_new_tokens = args.output_len;
  const std::vector<Generation> out = runtime.generate(prompts, gen);
  const GenerationStats after = runtime.stats();
  for (const Generation& g : out)
    MXMOE_CHECK(int(g.tokens.size()) == args.output_len, "a sequence stopped after ", g.tokens.size(), " tokens");

  const double prefill_s = after.prefill_seconds - before.prefill_seconds;
  const double decode_s = after.decode_seconds - before.decode_seconds;
  const int steps = args.output_len - 1;  // the first token comes from the prefill step
  const double step_ms = decode_s / steps * 1e3;
  const double decode_tok_s = double(args.batch) * steps / decode_s;
  const double prefill_tok_s = double(args.batch) * args.input_len / prefill_s;

  const Cost cost = model_cost(config, args.quantization);
  const double e = double(config.num_experts), k = double(config.num_experts_per_tok);
  const double experts_per_layer = cost.moe_layers ? e * (1.0 - std::pow(1.0 - k / e, double(args.batch))) : 0;
  const double mean_context = args.input_len + args.output_len / 2.0;
  const double kv_bytes = double(args.batch) * double(config.num_hidden_layers) * mean_context *
                          double(config.num_key_value_heads) * double(config.head_dim) * 2 * 2;
  const double step_bytes = cost.shared_bytes + double(cost.moe_layers) * experts_per_layer * cost.expert_bytes +
                            cost.lm_head_bytes + kv_bytes;
  const double decode_sol = step_bytes / (step_ms * 1e-3) / (args.tp * copy_gbs * 1e9);
  const double attn_flops = double(args.batch) * double(config.num_hidden_layers) * 2.0 *
                            double(config.num_attention_heads * config.head_dim) * double(args.input_len) *
                            double(args.input_len);  // causal QK^T + PV: 2·2·T²/2 per head dim
  const double prefill_flops = double(args.batch) * (double(args.input_len) * cost.flops_per_token + cost.lm_head_flops) +
                               attn_flops;
  const double prefill_sol = prefill_flops / (args.tp * bf16_tflops * 1e12) / prefill_s;

  std::vector<RankTimes> times(size_t(args.tp));
  runtime.run_on_ranks([&](TensorParallelRuntime::Rank& r) {
    RankTimes& t = times[size_t(r.local)];
    t.step_only_ms = time_decode_steps(r, prompts, args.profile_step);
    if (r.comm) {
      const cudaStream_t s = r.generator->stream();
      const Tensor x = bench::random_bf16({args.batch, config.hidden_size}, 3, 1.f, s);
      t.allreduce_us = 1e3 * bench::median_ms(s, [&](int) { r.comm->all_reduce_sum(x, s); }, 5, 50);
    }
  });
  const double step_only_ms = times.front().step_only_ms, allreduce_us = times.front().allreduce_us;
  const int allreduces_per_step = 2 * int(config.num_hidden_layers) + 1;
  double peak_gib = 0;
  for (int d = 0; d < args.tp; ++d) peak_gib = std::max(peak_gib, double(device_memory_stats(d).peak) / (1ull << 30));

  nlohmann::ordered_json j;
  j["model"] = config.model_type;
  j["source"] = source;
  j["load_format"] = args.load_format;
  j["quantization"] = args.quantization;
  j["tp"] = args.tp;
  j["communicator"] = args.communicator || args.tp > 1;
  j["cuda_graphs"] = args.graphs;
  j["batch"] = args.batch;
  j["input_len"] = args.input_len;
  j["output_len"] = args.output_len;
  j["load_seconds"] = load_seconds;
  j["weights_gib"] = weights_gib;
  j["peak_gpu_gib"] = peak_gib;
  j["ttft_ms"] = prefill_s * 1e3;
  j["prefill_tok_s"] = prefill_tok_s;
  j["decode_ms_per_step"] = step_ms;
  j["decode_tok_s"] = decode_tok_s;
  j["decode_step_only_ms"] = step_only_ms;
  j["allreduce_us"] = allreduce_us;
  j["allreduces_per_step"] = allreduces_per_step;
  j["allreduce_ms_per_step"] = allreduce_us * allreduces_per_step / 1e3;
  j["graph_captures"] = after.graph_captures;
  j["graph_replays"] = after.graph_replays - before.graph_replays;
  j["chained_steps"] = after.chained_steps - before.chained_steps;
  j["copy_bandwidth_gbs"] = copy_gbs;
  j["decode_bytes_per_step"] = step_bytes;
  j["decode_kv_bytes_per_step"] = kv_bytes;
  j["expected_experts_per_layer"] = experts_per_layer;
  j["decode_sol_fraction"] = decode_sol;
  j["cublaslt_bf16_tflops"] = bf16_tflops;
  j["prefill_tflops"] = prefill_flops / prefill_s / 1e12;
  j["prefill_bf16_sol_fraction"] = prefill_sol;
  std::printf(
      "%s %s tp %d, batch %d, %d+%d tokens, graphs %s: load %.2f s, weights %.2f GiB, peak %.2f GiB | TTFT %.1f ms, prefill "
      "%.0f tok/s (%.1f TFLOP/s, %.1f%% of cuBLASLt bf16 %.0f) | decode %.3f ms/step, %.1f tok/s, %.1f%% of speed of "
      "light (%.1f MB/step, %.2f experts/layer, copy %.0f GB/s); steps alone %.3f ms; all-reduce %.1f us x %d "
      "per step; graphs: %lld captured, %lld replayed; %lld steps chained\n",
      config.model_type.c_str(), args.quantization.c_str(), args.tp, args.batch, args.input_len, args.output_len,
      args.graphs ? "on" : "off", load_seconds, weights_gib, peak_gib, prefill_s * 1e3, prefill_tok_s,
      prefill_flops / prefill_s / 1e12, 100 * prefill_sol, bf16_tflops, step_ms, decode_tok_s, 100 * decode_sol,
      step_bytes / 1e6, experts_per_layer, copy_gbs, step_only_ms, allreduce_us, allreduces_per_step,
      (long long)after.graph_captures, (long long)(after.graph_replays - before.graph_replays),
      (long long)(after.chained_steps - before.chained_steps));
  if (!args.json.empty()) {
    std::ofstream f(args.json);
    MXMOE_CHECK(f, "cannot write ", args.json);
    f << j.dump(2) << "\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench: %s\n", e.what());
    return 1;
  }
}
