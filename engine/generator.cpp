#include "engine/generator.h"

#include <algorithm>
#include <chrono>

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
    : model_(model), cache_(cache), device_(cache.k(0).device()), uploader_(device_) {
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

Tensor Generator::upload(const std::vector<int32_t>& values) const {
  const Tensor host = Tensor::wrap(const_cast<int32_t*>(values.data()), {int64_t(values.size())}, DType::i32,
                                   Device::cpu);
  if (device_ == Device::cpu) return host.to(Device::cpu);
  Tensor out = Tensor::empty(host.shape(), DType::i32, Device::cuda);
  out.copy_from(host, stream());  // pageable source: the copy completes before returning
  return out;
}

Tensor Generator::step(std::span<const int> seqs, const std::vector<std::vector<int32_t>>& tokens,
                       const std::vector<int32_t>& logit_rows) {
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

  if (graphs_ && graphs_->covers(h)) return graphs_->run(h, stream());
  // Eager. The first step of a token count runs outside the arena: layers make or grow the
  // workspaces they keep on a new size (which may also move what graphs baked).
  const bool fresh = device_ == Device::cuda && seen_tokens_.insert(h.num_tokens()).second;
  if (fresh && graphs_) graphs_->invalidate();
  const StepArena::Scope scope(fresh ? nullptr : arena_.get());
  const StepInputs in = uploader_.upload(h, stream());
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
  std::vector<size_t> running(prompts.size());          // prompts still generating
  for (size_t i = 0; i < prompts.size(); ++i) {
    MXMOE_CHECK(!prompts[i].empty(), "prompt ", i, " is empty");
    guard.ids.push_back(cache_.add_sequence());
    running[i] = i;
    stats_.prompt_tokens += int64_t(prompts[i].size());
  }
  const int64_t vocab = model_.config().vocab_size;
  std::vector<std::vector<int32_t>> pending = prompts;  // tokens each running prompt has yet to feed
  while (!running.empty()) {
    const StepArena::Scope scope(arena_.get());  // this iteration's device temporaries (GPU)
    const auto start = std::chrono::steady_clock::now();
    const bool prefill = std::any_of(running.begin(), running.end(), [&](size_t i) { return out[i].tokens.empty(); });
    // Each sequence feeds up to its share of max_step_tokens, so a long prompt is prefilled in
    // chunks (bounded activations); those whose pending tokens all go in get a token sampled.
    const size_t quota = std::max<size_t>(1, size_t(options.max_step_tokens) / running.size());
    std::vector<int> seqs;
    std::vector<std::vector<int32_t>> fed;
    std::vector<size_t> sampled;  // indices into running
    std::vector<int32_t> rows, prev_offsets = {0}, prev_ids;
    std::vector<SamplingParams> params;
    int32_t row_end = 0;
    for (size_t j = 0; j < running.size(); ++j) {
      const size_t i = running[j], n = std::min(pending[j].size(), quota);
      seqs.push_back(guard.ids[i]);
      fed.emplace_back(pending[j].begin(), pending[j].begin() + long(n));
      pending[j].erase(pending[j].begin(), pending[j].begin() + long(n));
      row_end += int32_t(n);
      if (!pending[j].empty()) continue;
      sampled.push_back(j);
      rows.push_back(row_end - 1);  // the sequence's last token predicts the next
      prev_ids.insert(prev_ids.end(), history[i].begin(), history[i].end());
      prev_offsets.push_back(int32_t(prev_ids.size()));
      SamplingParams p = options.sampling;
      p.step = out[i].tokens.size();
      params.push_back(p);
    }
    if (sampled.empty()) {  // a middle chunk of long prompts: fill the cache, sample nothing
      step(seqs, fed, {row_end - 1});
      stats_.prefill_seconds += seconds_since(start);  // host time; the GPU work is waited for by the next sample
      continue;
    }
    const Tensor logits = step(seqs, fed, rows);
    const int64_t b = int64_t(sampled.size());
    Tensor tokens = Tensor::empty({b}, DType::i32, device_);
    Tensor params_buffer = device_ == Device::cuda ? Tensor::empty({b * int64_t(sizeof(SamplingParams))}, DType::u8,
                                                                   Device::cuda)
                                                   : Tensor();
    Tensor workspace = device_ == Device::cuda ? Tensor::empty({b, vocab}, DType::f32, Device::cuda) : Tensor();
    ops::sample(logits, params, params_buffer, upload(prev_offsets), upload(prev_ids), workspace, tokens, stream());
    const Tensor chosen = tokens.to(Device::cpu, stream());  // synchronizes the step
    (prefill ? stats_.prefill_seconds : stats_.decode_seconds) += seconds_since(start);

    std::vector<bool> done(running.size(), false);
    for (size_t r = 0; r < sampled.size(); ++r) {
      const size_t j = sampled[r], i = running[j];
      const int32_t token = chosen.data_as<int32_t>()[r];
      out[i].tokens.push_back(token);
      history[i].push_back(token);
      ++stats_.generated_tokens;
      if (std::find(options.stop_ids.begin(), options.stop_ids.end(), token) != options.stop_ids.end())
        out[i].finish = Generation::Finish::stop_id;
      else if (on_token && !on_token(i, token))
        out[i].finish = Generation::Finish::caller;
      done[j] = out[i].finish != Generation::Finish::length || int(out[i].tokens.size()) >= options.max_new_tokens;
      if (!done[j]) pending[j] = {token};
    }
    std::vector<size_t> still;
    std::vector<std::vector<int32_t>> still_pending;
    for (size_t j = 0; j < running.size(); ++j)
      if (!done[j]) {
        still.push_back(running[j]);
        still_pending.push_back(std::move(pending[j]));
      }
    running = std::move(still);
    pending = std::move(still_pending);
  }
  return out;
}

}  // namespace mxmoe
