#include "engine/generator.h"

#include <algorithm>
#include <chrono>
#include <optional>

#include "engine/env.h"
#include "engine/error.h"
#include "engine/ops.h"

namespace mxmoe {

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Frees the sequences' KV blocks however generate() ends.
struct SequenceGuard {
  KvCache& cache;
  std::vector<int> ids;
  ~SequenceGuard() {
    for (int id : ids) cache.free_sequence(id);
  }
};

}  // namespace

Generator::Generator(CausalLM& model, KvCache& cache, const GeneratorOptions& options)
    : model_(model), cache_(cache), device_(cache.k(0).device()), uploader_(device_), sampled_(device_),
      chain_steps_(env_flag("MXMOE_CHAINED_STEPS", true)) {
  if (device_ != Device::cuda) return;
  stream_ = std::make_unique<Stream>();
  arena_ = StepArena::create(current_device());
  // MXMOE_CUDA_GRAPHS=0: the plain eager steps, for debugging.
  if (options.max_graph_batch > 0 && model.config().rope.type != RopeType::dynamic && env_flag("MXMOE_CUDA_GRAPHS", true))
    graphs_ = std::make_unique<DecodeGraphs>(model, cache, *arena_, uploader_, options.max_graph_batch,
                                             options.cuda_graphs, seen_tokens_);
}

const GenerationStats& Generator::stats() const {
  if (graphs_) {
    stats_.graph_captures = graphs_->captures();
    stats_.graph_replays = graphs_->replays();
  }
  return stats_;
}

Tensor Generator::step(std::span<const int> seqs, const std::vector<std::vector<int32_t>>& tokens,
                       const std::vector<int32_t>& logit_rows) {
  return run_step(seqs, tokens, logit_rows, nullptr);
}

Tensor Generator::step(std::span<const int> seqs, const Tensor& tokens, const std::vector<int32_t>& logit_rows) {
  MXMOE_CHECK(tokens.device() == device_ && tokens.dtype() == DType::i32 && tokens.dim() == 1 &&
                  tokens.size(0) == int64_t(seqs.size()) && tokens.is_contiguous(),
              "step: the fed tokens must be a contiguous i32 [", seqs.size(), "] on the model's device, got ",
              dtype_name(tokens.dtype()), " ", shape_str(tokens.shape()));
  // One token per sequence; the host ids are placeholders the device ones overwrite.
  return run_step(seqs, std::vector<std::vector<int32_t>>(seqs.size(), std::vector<int32_t>{0}), logit_rows, &tokens);
}

Tensor Generator::run_step(std::span<const int> seqs, const std::vector<std::vector<int32_t>>& tokens,
                           const std::vector<int32_t>& logit_rows, const Tensor* fed) {
  MXMOE_CHECK(seqs.size() == tokens.size() && !seqs.empty(), "step: ", seqs.size(), " sequences with ", tokens.size(),
              " token lists");
  const int64_t vocab = model_.config().vocab_size;
  HostStep h;
  h.cu_seqlens = {0};
  for (size_t s = 0; s < seqs.size(); ++s) {
    MXMOE_CHECK(!tokens[s].empty(), "step: sequence ", seqs[s], " has no new tokens");
    for (int32_t id : tokens[s])
      MXMOE_CHECK(id >= 0 && id < vocab, "token id ", id, " is outside the vocabulary [0, ", vocab, ")");
    const int64_t begin = cache_.length(seqs[s]);
    MXMOE_CHECK(cache_.can_append(seqs[s], int64_t(tokens[s].size())), "KV cache full: sequence ", seqs[s],
                " needs room for ", tokens[s].size(), " more tokens (", cache_.free_blocks(), " free blocks of ",
                cache_.block_size(), ")");
    cache_.append(seqs[s], int64_t(tokens[s].size()));
    const int64_t end = cache_.length(seqs[s]);
    h.token_ids.insert(h.token_ids.end(), tokens[s].begin(), tokens[s].end());
    for (int64_t p = begin; p < end; ++p) h.positions.push_back(int32_t(p));
    cache_.slots(seqs[s], begin, end, h.kv_slots);
    h.cu_seqlens.push_back(int32_t(h.token_ids.size()));
    h.seq_lens.push_back(int32_t(end));
    h.max_seq_len = std::max(h.max_seq_len, end);
    h.table_width = std::max(h.table_width, int64_t(cache_.blocks(seqs[s]).size()));
  }
  for (int32_t r : logit_rows)
    MXMOE_CHECK(r >= 0 && r < int32_t(h.token_ids.size()), "step: logit row ", r, " outside the ",
                h.token_ids.size(), " new tokens");
  h.logit_rows = logit_rows;
  h.block_tables = cache_.block_table(seqs, h.table_width);

  if (graphs_ && graphs_->covers(h)) return graphs_->run(h, stream(), fed);
  // Eager. The first step of a token count runs outside the arena: layers make or grow the
  // workspaces they keep on a new size (which may also move what graphs baked).
  const bool fresh = device_ == Device::cuda && seen_tokens_.insert(h.num_tokens()).second;
  if (fresh && graphs_) graphs_->invalidate();
  const StepArena::Scope scope(fresh ? nullptr : arena_.get());
  const StepInputs in = uploader_.upload(h, stream(), {}, fed);
  Tensor logits = Tensor::empty({int64_t(logit_rows.size()), vocab}, model_.logits_dtype(), device_);
  model_.forward(in, cache_, logits, stream());
  return logits;
}

std::vector<Generation> Generator::generate(const std::vector<std::vector<int32_t>>& prompts,
                                            const GenerationOptions& options, const TokenCallback& on_token) {
  check_sampling_params(options.sampling);
  MXMOE_CHECK(options.max_new_tokens >= 0, "max_new_tokens must be >= 0, got ", options.max_new_tokens);
  MXMOE_CHECK(options.max_step_tokens >= 1, "max_step_tokens must be >= 1, got ", options.max_step_tokens);
  std::vector<Generation> out(prompts.size());
  if (prompts.empty() || options.max_new_tokens == 0) return out;

  SequenceGuard guard{cache_, {}};
  std::vector<std::vector<int32_t>> history = prompts;  // prompt + generated: the repetition penalty's input
  std::vector<std::vector<int32_t>> pending = prompts;  // per prompt: the tokens it has yet to feed
  std::vector<size_t> running;                          // prompts still generating, in order
  std::vector<bool> done(prompts.size(), false);
  for (size_t i = 0; i < prompts.size(); ++i) {
    MXMOE_CHECK(!prompts[i].empty(), "prompt ", i, " is empty");
    guard.ids.push_back(cache_.add_sequence());
    running.push_back(i);
    stats_.prompt_tokens += int64_t(prompts[i].size());
  }
  const int64_t vocab = model_.config().vocab_size;
  const bool needs_history = options.sampling.repetition_penalty != 1.f;

  // Samples `logits` (one row per prompt of `who`, `in_flight` tokens of each not read back yet)
  // into sampled_'s `slot` and starts reading the tokens back.
  const auto sample = [&](const Tensor& logits, const std::vector<size_t>& who, uint64_t in_flight, int slot) {
    const size_t b = who.size();
    size_t n_prev = 0;
    if (needs_history)
      for (size_t i : who) n_prev += history[i].size();
    // Staged as params [b] | prev_offsets [b + 1] | prev_ids [n_prev] (ops::SamplerInputs).
    std::byte* staged = sampled_.staging(slot, ops::sampler_input_bytes(int64_t(b), int64_t(n_prev)));
    const auto [params, prev_offsets, prev_ids] = ops::sampler_staging(staged, int64_t(b), int64_t(n_prev));
    prev_offsets[0] = 0;
    for (size_t r = 0; r < b; ++r) {
      const size_t i = who[r];
      params[r] = options.sampling;
      params[r].step = out[i].tokens.size() + in_flight;
      if (needs_history) std::copy(history[i].begin(), history[i].end(), prev_ids.begin() + prev_offsets[r]);
      prev_offsets[r + 1] = prev_offsets[r] + int32_t(needs_history ? history[i].size() : 0);
    }
    const bool gpu = device_ == Device::cuda;
    Tensor workspace = gpu ? Tensor::empty({int64_t(b), vocab}, DType::f32, Device::cuda) : Tensor();
    const ops::SamplerInputs inputs = ops::upload_sampler_inputs(staged, int64_t(b), int64_t(n_prev), device_, stream());
    ops::sample(logits, params, inputs, workspace, sampled_.buffer(slot, int64_t(b)), stream());
    sampled_.start_read(slot, b, stream());
  };

  // A step whose tokens have not been read back: its rows' prompts and its slot in sampled_.
  struct InFlight {
    std::vector<size_t> prompts;
    int slot = 0;
    bool prefill = false;
  };
  // Reads back the tokens of `step`; `chained`: the step after it was fed them on the device.
  const auto collect = [&](const InFlight& step, bool chained) {
    const std::span<const int32_t> tokens = sampled_.finish_read(step.slot);
    for (size_t r = 0; r < step.prompts.size(); ++r) {
      const size_t i = step.prompts[r];
      if (done[i]) continue;  // drawn by a chained step past the token that stopped it
      const int32_t token = tokens[r];
      out[i].tokens.push_back(token);
      history[i].push_back(token);
      ++stats_.generated_tokens;
      if (std::find(options.stop_ids.begin(), options.stop_ids.end(), token) != options.stop_ids.end())
        out[i].finish = Generation::Finish::stop_id;
      else if (on_token && !on_token(i, token))
        out[i].finish = Generation::Finish::caller;
      done[i] = out[i].finish != Generation::Finish::length || int(out[i].tokens.size()) >= options.max_new_tokens;
      if (!done[i] && !chained) pending[i] = {token};
    }
    std::erase_if(running, [&](size_t i) { return done[i]; });
  };
  // Whether the step after `step` is known before its tokens are: it sampled every running prompt
  // and each of them needs another token unless this one stops it. Not after a prefill: launching
  // the decode graph while the eager prefill was still queued delayed the prefill's tokens (H100,
  // Qwen3-30B-A3B, 512 tokens: TTFT 27 ms instead of 21), so the first decode step waits for them.
  const auto chainable = [&](const InFlight& step) {
    if (!chain_steps_ || step.prefill || needs_history || step.prompts != running) return false;
    return std::all_of(step.prompts.begin(), step.prompts.end(), [&](size_t i) {
      return pending[i].empty() && int(out[i].tokens.size()) + 1 < options.max_new_tokens &&
             cache_.can_append(guard.ids[i], 1);
    });
  };

  std::optional<InFlight> ahead;
  while (ahead || !running.empty()) {
    const StepArena::Scope scope(arena_.get());  // this iteration's device temporaries (GPU)
    const auto start = std::chrono::steady_clock::now();
    if (ahead) {
      const InFlight prev = std::move(*ahead);
      ahead.reset();
      if (chainable(prev)) {  // launch the next decode step first, fed prev's tokens on the device
        std::vector<int> seqs;
        std::vector<int32_t> rows;
        for (size_t r = 0; r < prev.prompts.size(); ++r) {
          seqs.push_back(guard.ids[prev.prompts[r]]);
          rows.push_back(int32_t(r));
        }
        const Tensor logits = step(seqs, sampled_.buffer(prev.slot, int64_t(seqs.size())), rows);
        ahead = InFlight{prev.prompts, 1 - prev.slot, false};
        ++stats_.chained_steps;
        sample(logits, ahead->prompts, 1, ahead->slot);
      }
      collect(prev, ahead.has_value());  // waits for prev's tokens only
      (prev.prefill ? stats_.prefill_seconds : stats_.decode_seconds) += seconds_since(start);
      continue;
    }
    const bool prefill = std::any_of(running.begin(), running.end(), [&](size_t i) { return out[i].tokens.empty(); });
    // Each sequence feeds up to its share of max_step_tokens, so a long prompt is prefilled in
    // chunks (bounded activations); those whose pending tokens all go in get a token sampled.
    const size_t quota = std::max<size_t>(1, size_t(options.max_step_tokens) / running.size());
    std::vector<int> seqs;
    std::vector<std::vector<int32_t>> fed;
    std::vector<size_t> sampled;  // prompts
    std::vector<int32_t> rows;
    int32_t row_end = 0;
    for (size_t i : running) {
      const size_t n = std::min(pending[i].size(), quota);
      seqs.push_back(guard.ids[i]);
      fed.emplace_back(pending[i].begin(), pending[i].begin() + long(n));
      pending[i].erase(pending[i].begin(), pending[i].begin() + long(n));
      row_end += int32_t(n);
      if (!pending[i].empty()) continue;
      sampled.push_back(i);
      rows.push_back(row_end - 1);  // the sequence's last token predicts the next
    }
    if (sampled.empty()) {  // a middle chunk of long prompts: fill the cache, sample nothing
      step(seqs, fed, {row_end - 1});
      stats_.prefill_seconds += seconds_since(start);  // host time; the GPU work is waited for by the next sample
      continue;
    }
    const Tensor logits = step(seqs, fed, rows);
    ahead = InFlight{std::move(sampled), 0, prefill};
    sample(logits, ahead->prompts, 0, ahead->slot);
    (prefill ? stats_.prefill_seconds : stats_.decode_seconds) += seconds_since(start);
  }
  return out;
}

}  // namespace mxmoe
