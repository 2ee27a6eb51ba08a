#include "engine/decode_graphs.h"

#include <algorithm>
#include <bit>

#include "engine/error.h"

namespace mxmoe {

namespace {
constexpr int64_t kMinContext = 256;  // smallest context bucket
}

DecodeGraphs::DecodeGraphs(CausalLM& model, const KvCache& cache, StepArena& arena, StepUploader& uploader,
                           int max_batch, bool replay, std::set<int64_t>& seen_tokens)
    : model_(model), cache_(cache), arena_(arena), uploader_(uploader), max_batch_(max_batch), replay_(replay),
      seen_tokens_(seen_tokens) {
  MXMOE_CHECK(max_batch >= 1, "CUDA graphs: max batch must be >= 1, got ", max_batch);
}

int64_t DecodeGraphs::bucket(int64_t num_seqs) const { return int64_t(std::bit_ceil(uint64_t(num_seqs))); }

bool DecodeGraphs::covers(const HostStep& step) const {
  const int64_t s = step.num_seqs();
  // Graph memory starts at the bottom of the arena: nothing of this step may live there yet.
  return s >= 1 && step.num_tokens() == s && bucket(s) <= max_batch_ &&
         int64_t(step.logit_rows.size()) <= bucket(s) && arena_.live_count() == 0;
}

void DecodeGraphs::forward(const StepInputs& in, const Tensor& logits, cudaStream_t stream) {
  model_.forward(in, cache_, logits, stream);
}

Tensor DecodeGraphs::run(const HostStep& step, cudaStream_t stream, const Tensor* fed) {
  const int64_t b = bucket(step.num_seqs());
  const int64_t context = std::max<int64_t>(kMinContext, int64_t(std::bit_ceil(uint64_t(step.max_seq_len))));
  const int64_t width = (context + cache_.block_size() - 1) / cache_.block_size();
  const HostStep padded = pad_decode_step(step, b, width, context);
  const int64_t vocab = model_.config().vocab_size;

  Entry& e = entries_[{b, context}];
  if (!e.inputs.defined() || !logits_.defined() || logits_.size(0) < b) {
    const StepArena::Scope persistent(nullptr);  // graph buffers outlive every step
    if (!e.inputs.defined()) e.inputs = Tensor::empty({int64_t(padded.packed_size())}, DType::i32, Device::cuda);
    if (!logits_.defined() || logits_.size(0) < b) {
      logits_ = Tensor();
      logits_ = Tensor::empty({b, vocab}, model_.logits_dtype(), Device::cuda);
      invalidate();
    }
  }
  const StepInputs in = uploader_.upload(padded, stream, e.inputs, fed);
  const Tensor logits = logits_.slice(0, b);
  const Tensor result = logits_.slice(0, int64_t(step.logit_rows.size()));

  if (replay_ && e.graph.valid() && e.epoch == epoch_ && e.arena_generation == arena_.generation()) {
    e.graph.launch(stream);
    ++replays_;
    return result;
  }
  if (!replay_ || !e.warmed || !seen_tokens_.contains(b)) {
    // First step of this shape (or replay off): eager. A token count never seen: outside the
    // arena, as layers may make or grow the workspaces they keep.
    const bool fresh = seen_tokens_.insert(b).second;
    const StepArena::Scope scope(fresh ? nullptr : &arena_);
    if (fresh) invalidate();
    forward(in, logits, stream);
    e.warmed = true;
    return result;
  }
  const StepArena::Scope scope(&arena_);
  bool overflowed = false;
  CudaGraph graph;
  {
    const StepArena::Capture capture(arena_);
    try {
      graph = CudaGraph::capture(stream, [&] { forward(in, logits, stream); });
    } catch (const std::exception&) {
      // An allocation that overflowed got a placeholder address, which kernels take but a copy
      // checks while being captured (the tensor-parallel logits gather copies): the capture is
      // discarded either way. Any other failure is real.
      if (!capture.overflowed()) throw;
    }
    overflowed = capture.overflowed();
  }
  // Everything made during the capture must have been a temporary: a buffer kept from it would
  // hold a placeholder or step memory.
  MXMOE_CHECK(arena_.live_count() == 0, "CUDA graph capture: ", arena_.live_count(),
              " device allocations made while capturing a decode step outlived it (a layer made a buffer it keeps "
              "during a step it had run before; make it under StepArena::Scope(nullptr))");
  if (overflowed) {  // the arena grows at the next step; this one runs eagerly
    forward(in, logits, stream);
    return result;
  }
  e.graph = std::move(graph);
  e.epoch = epoch_;
  e.arena_generation = arena_.generation();
  e.graph.launch(stream);
  ++captures_;
  return result;
}

}  // namespace mxmoe
