// run-model: load a Hugging Face checkpoint, quantize it to MXFP8 while loading, and stream a
// completion (or a chat) to stdout. Statistics go to stderr at the end.
//
//   run-model -m DIR -p "prompt" [-n 128] [--chat] [--temperature 0.7] ...     (run-model -h)
//   run-model -m DIR --tp 4 ...                     tensor parallel over GPUs 0-3 (engine/tensor_parallel.h)
//   run-model -m DIR --tp 8 --dist-init node0:29500 --nnodes 2 --node-rank R ...   one process per node
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "engine/chat_template.h"
#include "engine/cuda_check.h"
#include "engine/error.h"
#include "engine/generator.h"
#include "engine/log.h"
#include "engine/memory.h"
#include "engine/model_loading.h"
#include "engine/perplexity.h"
#include "engine/tensor_parallel.h"
#include "engine/text_stream.h"
#include "engine/tokenizer.h"
#include "loader/generation_config.h"
#include "loader/weight_loader.h"
#include "models/model.h"

using namespace mxmoe;

namespace {

constexpr const char* kUsage = R"(usage: run-model [-m DIR] [-p PROMPT] [options]

  -m, --model DIR              Hugging Face checkpoint directory (config.json, *.safetensors,
                               tokenizer.json); default: the model bundled with mxmoe
  -p, --prompt TEXT            the prompt (default: "Once upon a time")
  -f, --file FILE              read the prompt from FILE
  -n, --max-tokens N           tokens to generate (default 128)
      --temperature T          0 = greedy (default 0.7)
      --top-k K                keep the K most likely tokens (default 0 = off)
      --top-p P                nucleus sampling (default 1 = off)
      --min-p P                drop tokens below P x the top probability (default 0 = off)
      --repetition-penalty R   (default 1 = off)
      --seed S                 same seed, same tokens (default 0)
      --stop TEXT              stop when the completion contains TEXT (repeatable)
      --chat                   render the prompt with the checkpoint's chat template
      --system TEXT            system message for --chat / --interactive
      --interactive            multi-turn chat at a prompt (empty line or EOF ends)
      --quantization Q         mxfp8 (default) or bf16
      --quantize-lm-head       quantize the LM head too (it stays bf16 by default)
      --scale-rule R           MXFP8 block scale: rceil (default) or ocp (OCP MX v1.0)
      --perplexity FILE        print the perplexity of FILE's text instead of generating
      --device D               cuda (default when a GPU is present) or cpu
      --max-model-len N        longest prompt + completion (default min(max_position_embeddings, 8192))
      --load-format F          safetensors (default) or dummy (random weights, no checkpoint needed)
      --gpu-memory-limit GB    cap the engine's GPU memory
      --tp, --tensor-parallel-size N   ranks per process: GPUs 0..N-1 (with --device cpu:
                               N simulated ranks, for testing); default 1
      --dist-init HOST:PORT    multi-node: node 0's address (node 0 listens on PORT)
      --nnodes N               multi-node: number of processes, one per node (default 1)
      --node-rank R            multi-node: this process's index, 0..N-1 (node 0 prints)
  -q, --quiet                  no load progress
  -h, --help                   this text
)";

struct Args {
  std::string model, prompt = "Once upon a time", system, quantization = "mxfp8", device, load_format = "safetensors";
  std::string perplexity_file, dist_init;
  std::vector<std::string> stops;
  ScaleRule scale_rule = ScaleRule::rceil;
  int max_tokens = 128, tp = 1, nnodes = 1, node_rank = 0;
  int64_t max_model_len = 0;
  double gpu_memory_limit_gb = 0;
  SamplingParams sampling;
  bool chat = false, interactive = false, quiet = false, quantize_lm_head = false;
};

std::string default_model_dir(const char* argv0) {
  // The bundled demo model sits in the source tree; the binary lives in <source>/build.
  const std::filesystem::path exe = std::filesystem::weakly_canonical(std::filesystem::path(argv0));
  for (auto dir = exe.parent_path(); !dir.empty() && dir != dir.root_path(); dir = dir.parent_path())
    if (std::filesystem::exists(dir / "models/demo/config.json")) return (dir / "models/demo").string();
  fail("no -m given and the bundled model (models/demo) was not found next to ", exe.string());
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MXMOE_CHECK(in, "cannot read ", path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

Args parse_args(int argc, char** argv) {
  Args a;
  a.sampling.temperature = 0.7f;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&]() -> std::string {
      MXMOE_CHECK(i + 1 < argc, "option ", arg, " needs a value (run-model -h)");
      return argv[++i];
    };
    const auto number = [&](double lo, double hi) {
      const std::string v = value();
      char* end = nullptr;
      const double d = std::strtod(v.c_str(), &end);
      MXMOE_CHECK(end && *end == 0 && !v.empty() && d >= lo && d <= hi, "option ", arg, ": '", v,
                  "' is not a number in [", lo, ", ", hi, "]");
      return d;
    };
    if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (arg == "-m" || arg == "--model") a.model = value();
    else if (arg == "-p" || arg == "--prompt") a.prompt = value();
    else if (arg == "-f" || arg == "--file") a.prompt = read_file(value());
    else if (arg == "-n" || arg == "--max-tokens") a.max_tokens = int(number(0, 1e9));
    else if (arg == "--temperature") a.sampling.temperature = float(number(0, 1e4));
    else if (arg == "--top-k") a.sampling.top_k = int32_t(number(0, 1e9));
    else if (arg == "--top-p") a.sampling.top_p = float(number(0, 1));
    else if (arg == "--min-p") a.sampling.min_p = float(number(0, 1));
    else if (arg == "--repetition-penalty") a.sampling.repetition_penalty = float(number(1e-6, 1e6));
    else if (arg == "--seed") a.sampling.seed = uint64_t(number(0, 1.8e19));
    else if (arg == "--chat") a.chat = true;
    else if (arg == "--stop") a.stops.push_back(value());
    else if (arg == "--system") a.system = value();
    else if (arg == "--interactive") a.interactive = a.chat = true;
    else if (arg == "--quantization") a.quantization = value();
    else if (arg == "--quantize-lm-head") a.quantize_lm_head = true;
    else if (arg == "--scale-rule") {
      const std::string r = value();
      MXMOE_CHECK(r == "rceil" || r == "ocp", "--scale-rule must be rceil or ocp, got ", r);
      a.scale_rule = r == "rceil" ? ScaleRule::rceil : ScaleRule::ocp;
    } else if (arg == "--perplexity") a.perplexity_file = value();
    else if (arg == "--device") a.device = value();
    else if (arg == "--max-model-len") a.max_model_len = int64_t(number(1, 1e9));
    else if (arg == "--load-format") a.load_format = value();
    else if (arg == "--gpu-memory-limit") a.gpu_memory_limit_gb = number(0, 1e6);
    else if (arg == "--tp" || arg == "--tensor-parallel-size") a.tp = int(number(1, 1024));
    else if (arg == "--dist-init") a.dist_init = value();
    else if (arg == "--nnodes") a.nnodes = int(number(1, 65536));
    else if (arg == "--node-rank") a.node_rank = int(number(0, 65535));
    else if (arg == "-q" || arg == "--quiet") a.quiet = true;
    else fail("unknown option ", arg, " (run-model -h)");
  }
  MXMOE_CHECK(a.quantization == "mxfp8" || a.quantization == "bf16", "--quantization must be mxfp8 or bf16, got ",
              a.quantization);
  MXMOE_CHECK(a.load_format == "safetensors" || a.load_format == "dummy", "--load-format must be safetensors or dummy, got ",
              a.load_format);
  MXMOE_CHECK(a.device.empty() || a.device == "cuda" || a.device == "cpu", "--device must be cuda or cpu, got ", a.device);
  MXMOE_CHECK(!a.dist_init.empty() || (a.nnodes == 1 && a.node_rank == 0),
              "--nnodes and --node-rank need --dist-init HOST:PORT (node 0's address)");
  MXMOE_CHECK(a.dist_init.empty() || a.device != "cpu", "--dist-init needs the GPU backend, not --device cpu");
  MXMOE_CHECK(a.nnodes == 1 || !a.interactive, "--interactive reads stdin in one process; not with --nnodes ",
              a.nnodes);
  if (a.model.empty()) a.model = default_model_dir(argv[0]);
  return a;
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

int run(int argc, char** argv) {
  const Args args = parse_args(argc, argv);
  const Device device = args.device.empty() ? (cuda_available() ? Device::cuda : Device::cpu)
                        : args.device == "cuda" ? Device::cuda
                                                : Device::cpu;
  MXMOE_CHECK(device == Device::cpu || cuda_available(), "--device cuda: no CUDA device is available");
  if (args.quiet) set_log_level(LogLevel::warn);

  const ModelConfig config = load_model_config(args.model);
  const Tokenizer tokenizer = Tokenizer::from_file(args.model + "/tokenizer.json");
  const int64_t max_len = resolve_max_model_len(config, args.max_model_len);
  TensorParallelOptions options;
  options.model_dir = args.model;
  options.load_format = parse_load_format(args.load_format);
  options.model.quant.scheme = args.quantization;
  options.model.quant.quantize_lm_head = args.quantize_lm_head;
  options.model.quant.scale_rule = args.scale_rule;
  options.model.device = device;
  options.load.quiet = args.quiet;
  options.load.gpu_memory_limit = size_t(args.gpu_memory_limit_gb * (1ull << 30));
  options.kv_cache.num_blocks = (max_len + options.kv_cache.block_size - 1) / options.kv_cache.block_size;
  options.local_ranks = args.tp;
  if (!args.dist_init.empty()) options.dist_init = make_dist_init(args.dist_init, args.nnodes, args.node_rank);
  const bool prints = args.node_rank == 0;  // multi-node: every node runs the same loop, node 0 writes

  const auto load_start = std::chrono::steady_clock::now();
  int gpus = 0;  // this process's GPUs (the runtime checks that there are --tp of them)
  if (device == Device::cuda) CUDA_CHECK(cudaGetDeviceCount(&gpus));
  gpus = std::min(gpus, args.tp);
  for (int i = 0; i < gpus; ++i) reset_device_memory_peak(i);
  TensorParallelRuntime runtime(options);  // each rank loads its shard, quantized while loading
  const double load_seconds = seconds_since(load_start);

  if (!args.perplexity_file.empty()) {
    const std::vector<int32_t> ids = tokenizer.encode(read_file(args.perplexity_file), false);
    const int64_t window = std::min<int64_t>(512, max_len - 1);
    const auto start = std::chrono::steady_clock::now();
    PerplexityResult r;
    runtime.run_on_ranks([&](TensorParallelRuntime::Rank& rank) {
      const PerplexityResult mine = perplexity(*rank.generator, ids, window);
      if (rank.local == 0) r = mine;
    });
    if (!prints) return 0;
    std::printf("perplexity %.4f over %lld tokens of %s (%s, scale rule %s, windows of %lld)\n", r.perplexity(),
                (long long)r.predicted, args.perplexity_file.c_str(), args.quantization.c_str(),
                args.scale_rule == ScaleRule::rceil ? "rceil" : "ocp", (long long)window);
    std::fprintf(stderr, "[mxmoe] load %.2f s, evaluation %.2f s\n", load_seconds, seconds_since(start));
    return 0;
  }

  GenerationOptions gen;
  gen.max_new_tokens = args.max_tokens;
  gen.sampling = args.sampling;
  gen.stop_ids = load_stop_ids(args.model, config);

  std::unique_ptr<ChatTemplate> chat_template;
  if (args.chat) chat_template = std::make_unique<ChatTemplate>(ChatTemplate::from_dir(args.model));
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  if (args.chat && !args.system.empty()) messages.push_back({{"role", "system"}, {"content", args.system}});

  // One turn: tokenize, generate with streamed text, return the completion.
  const auto turn = [&](const std::string& user) {
    std::string text = user;
    if (chat_template) {
      messages.push_back({{"role", "user"}, {"content", user}});
      text = chat_template->render(messages, true);
    }
    const std::vector<int32_t> ids = tokenizer.encode(text, !chat_template);
    MXMOE_CHECK(int64_t(ids.size()) + args.max_tokens <= max_len, "prompt (", ids.size(), " tokens) + --max-tokens ",
                args.max_tokens, " exceed --max-model-len ", max_len);
    TextStream completion(tokenizer, args.stops);
    const auto print = [&](std::string_view piece) {
      if (prints) std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    };
    if (!chat_template && prints) std::fputs(user.c_str(), stdout);
    // On every node alike (the decision to stop must agree); only node 0 prints.
    runtime.generate({ids}, gen, [&](size_t, int32_t token) {
      const bool stopped = completion.push(token);
      print(completion.take(stopped));
      return !stopped;
    });
    print(completion.take(true));
    if (prints) std::fputc('\n', stdout);
    if (chat_template) messages.push_back({{"role", "assistant"}, {"content", completion.text()}});
  };

  if (args.interactive) {
    std::string line;
    while (true) {
      std::fputs("> ", stdout);
      std::fflush(stdout);
      if (!std::getline(std::cin, line) || line.empty()) break;
      turn(line);
    }
  } else {
    turn(args.prompt);
  }

  std::fflush(stdout);  // the text before the statistics
  if (!prints) return 0;
  const GenerationStats& s = runtime.stats();
  double peak_gib = 0;  // the fullest GPU of this process
  for (int i = 0; i < gpus; ++i) peak_gib = std::max(peak_gib, double(device_memory_stats(i).peak) / (1ull << 30));
  const std::string where = runtime.world_size() > 1 ? cat(device == Device::cuda ? "cuda" : "cpu", " x ",
                                                           runtime.world_size(), " (tensor parallel)")
                                                     : device == Device::cuda ? "cuda" : "cpu";
  std::fprintf(stderr,
               "[mxmoe] %s %s on %s: load %.2f s, peak GPU memory %.2f GiB%s | prompt %lld tok, %.1f tok/s | "
               "decode %lld tok, %.1f tok/s\n",
               config.model_type.c_str(), args.quantization.c_str(), where.c_str(), load_seconds, peak_gib,
               runtime.local_size() > 1 && device == Device::cuda ? " per GPU" : "", (long long)s.prompt_tokens,
               s.prefill_seconds > 0 ? double(s.prompt_tokens) / s.prefill_seconds : 0.0,
               (long long)(s.generated_tokens), s.decode_seconds > 0 ? double(s.generated_tokens - 1) / s.decode_seconds : 0.0);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "run-model: %s\n", e.what());
    return 1;
  }
}
