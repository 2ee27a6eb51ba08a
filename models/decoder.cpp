#include "models/decoder.h"

#include <cmath>
#include <map>
#include <utility>

#include "engine/error.h"
#include "engine/linear.h"
#include "engine/ops.h"
#include "kernels/rope.h"
#include "loader/weight_set.h"

namespace mxmoe {

namespace {

WeightSpec norm_spec(const std::string& name, int64_t size) {
  WeightSpec spec{name, {size}};
  spec.dummy_mean = 1.f;  // RMSNorm weights sit around 1
  return spec;
}

// This rank's share of the model under tensor parallelism (tp = 1: all of it).
struct Shards {
  int tp = 1, rank = 0;
  int64_t heads = 0, kv_heads = 0;  // query and KV heads this rank holds
  int kv_tp = 1, kv_rank = 0;       // the cut of the KV projections: tp, or num_kv_heads when replicated
  int64_t vocab = 0, vocab_begin = 0;
  int kv_replicas() const { return tp / kv_tp; }  // ranks holding each KV head
};

Shards make_shards(const ModelConfig& c, const Communicator* comm) {
  Shards s;
  if (comm) {
    s.tp = comm->size();
    s.rank = comm->rank();
  }
  const int64_t tp = s.tp, nq = c.num_attention_heads, nkv = c.num_key_value_heads;
  MXMOE_CHECK(nq % tp == 0, c.file, ": num_attention_heads ", nq, " is not divisible by the tensor parallel size ",
              tp);
  MXMOE_CHECK(c.vocab_size % tp == 0, c.file, ": vocab_size ", c.vocab_size,
              " is not divisible by the tensor parallel size ", tp, " (the embedding and LM head are split by vocabulary)");
  s.heads = nq / tp;
  if (nkv % tp == 0) {  // each rank its own KV heads
    s.kv_heads = nkv / tp;
    s.kv_tp = s.tp;
    s.kv_rank = s.rank;
  } else {  // each KV head on the tp / nkv ranks whose query heads read it
    MXMOE_CHECK(tp % nkv == 0, c.file, ": num_key_value_heads ", nkv, " and tensor parallel size ", tp,
                " do not fit: KV heads are split when the size divides them and replicated when they divide it");
    s.kv_heads = 1;
    s.kv_tp = int(nkv);
    s.kv_rank = int(s.rank / (tp / nkv));
  }
  s.vocab = c.vocab_size / tp;
  s.vocab_begin = s.rank * s.vocab;
  return s;
}

struct DecoderLayer {
  std::unique_ptr<WeightSet> norms;  // input_layernorm, post_attention_layernorm[, q_norm, k_norm]
  std::unique_ptr<LinearLayer> qkv, o_proj;  // qkv holds q only when kv is set
  std::unique_ptr<LinearLayer> kv;           // replicated KV heads: k and v, cut by KV head instead of by rank
  std::unique_ptr<LinearLayer> gate_up, down;                           // dense MLP
  std::unique_ptr<LinearLayer> router;                                  // MoE: f32 logits [T, E]
  std::unique_ptr<FusedMoELayer> experts;
  std::unique_ptr<LinearLayer> shared_gate_up, shared_down, shared_gate;  // Qwen2-MoE shared expert
};

class DecoderLM final : public CausalLM {
 public:
  DecoderLM(const ModelConfig& config, const DecoderSpec& spec, const ModelOptions& options)
      : config_(config),
        spec_(spec),
        options_(options),
        shards_(make_shards(config, options.comm)),
        rope_(config.rope),
        inv_freq_(Tensor::empty({config.head_dim / 2}, DType::f32, options.device)) {
    const int64_t h = config.hidden_size, hd = config.head_dim, nq = config.num_attention_heads,
                  nkv = config.num_key_value_heads, v = config.vocab_size;
    const Device dev = options.device;
    const Shards& sh = shards_;
    embed_ = std::make_unique<WeightSet>(
        "model.embed_tokens",
        std::vector<WeightSpec>{{"model.embed_tokens.weight", {v, h}, ShardSlice{0, sh.vocab_begin, sh.vocab}}}, dev,
        DType::bf16, WeightSet::Mode::keep);
    for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
      const std::string p = cat("model.layers.", l, ".");
      DecoderLayer layer;
      std::vector<WeightSpec> norms = {norm_spec(p + "input_layernorm.weight", h),
                                       norm_spec(p + "post_attention_layernorm.weight", h)};
      if (spec.qk_norm != QkNorm::none) {
        const bool full = spec.qk_norm == QkNorm::full;
        norms.push_back(norm_spec(p + "self_attn.q_norm.weight", full ? nq * hd : hd));
        norms.push_back(norm_spec(p + "self_attn.k_norm.weight", full ? nkv * hd : hd));
      }
      layer.norms = std::make_unique<WeightSet>(p + "norms", norms, dev, DType::bf16, WeightSet::Mode::keep);
      const std::string a = p + "self_attn.";
      if (sh.kv_tp == sh.tp) {
        layer.qkv = linear(a + "qkv_proj", h,
                           {{a + "q_proj", nq * hd}, {a + "k_proj", nkv * hd}, {a + "v_proj", nkv * hd}},
                           config.qkv_bias, LinearParallel::column, LayerRole::linear);
      } else {
        layer.qkv = linear(a + "q_proj", h, {{a + "q_proj", nq * hd}}, config.qkv_bias, LinearParallel::column,
                           LayerRole::linear);
        layer.kv = linear(a + "kv_proj", h, {{a + "k_proj", nkv * hd}, {a + "v_proj", nkv * hd}}, config.qkv_bias,
                          LinearParallel::column, LayerRole::linear, sh.kv_tp, sh.kv_rank);
      }
      layer.o_proj = linear(a + "o_proj", nq * hd, {{a + "o_proj", h}}, config.o_proj_bias, LinearParallel::row,
                            LayerRole::linear);
      if (config.is_moe_layer(l)) {
        const std::string m = p + spec.moe_block + ".";
        layer.router = linear(m + "gate", h, {{m + "gate", config.num_experts}}, false, LinearParallel::replicated,
                              LayerRole::router_gate);
        FusedMoEConfig moe;
        moe.name = m + "experts";
        moe.num_experts = config.num_experts;
        moe.hidden_size = h;
        moe.intermediate_size = config.moe_intermediate_size;
        moe.names = spec.mixtral_expert_names ? ExpertNames::mixtral(m + "experts")
                                              : ExpertNames::gate_up_down(m + "experts");
        moe.routing = {int(config.num_experts_per_tok), config.norm_topk_prob};
        moe.tp_rank = sh.rank;
        moe.tp_size = sh.tp;
        moe.device = dev;
        layer.experts = std::make_unique<FusedMoELayer>(moe, options.quant);
        if (spec.shared_expert) {
          const std::string s = m + "shared_expert.";
          const int64_t is = config.shared_expert_intermediate_size;
          layer.shared_gate_up = linear(s + "gate_up_proj", h, {{s + "gate_proj", is}, {s + "up_proj", is}}, false,
                                        LinearParallel::column, LayerRole::linear);
          layer.shared_down = linear(s + "down_proj", is, {{s + "down_proj", h}}, false, LinearParallel::row,
                                     LayerRole::linear);
          layer.shared_gate = linear(m + "shared_expert_gate", h, {{m + "shared_expert_gate", 1}}, false,
                                     LinearParallel::replicated, LayerRole::router_gate);
        }
      } else {
        const std::string m = p + "mlp.";
        const int64_t i = config.intermediate_size;
        layer.gate_up = linear(m + "gate_up_proj", h, {{m + "gate_proj", i}, {m + "up_proj", i}}, false,
                               LinearParallel::column, LayerRole::linear);
        layer.down = linear(m + "down_proj", i, {{m + "down_proj", h}}, false, LinearParallel::row, LayerRole::linear);
      }
      layers_.push_back(std::move(layer));
    }
    final_norm_ = std::make_unique<WeightSet>("model.norm", std::vector<WeightSpec>{norm_spec("model.norm.weight", h)},
                                              dev, DType::bf16, WeightSet::Mode::keep);
    lm_head_ = linear("lm_head", h, {{config.tie_word_embeddings ? "model.embed_tokens" : "lm_head", v}}, false,
                      LinearParallel::column, LayerRole::lm_head);  // each rank its vocabulary rows
  }

  const ModelConfig& config() const override { return config_; }

  std::vector<Loadable*> loadables() override {
    std::vector<Loadable*> out = {embed_.get()};
    for (DecoderLayer& l : layers_)
      for (Loadable* x : std::initializer_list<Loadable*>{l.norms.get(), l.qkv.get(), l.kv.get(), l.o_proj.get(),
                                                          l.gate_up.get(), l.down.get(), l.router.get(),
                                                          l.experts.get(), l.shared_gate_up.get(),
                                                          l.shared_down.get(), l.shared_gate.get()})
        if (x) out.push_back(x);
    out.push_back(final_norm_.get());
    out.push_back(lm_head_.get());
    return out;
  }

  KvCacheConfig kv_cache_config() const override {
    KvCacheConfig c;
    c.num_layers = int(config_.num_hidden_layers);
    c.num_kv_heads = int(shards_.kv_heads);
    c.head_dim = int(config_.head_dim);
    return c;
  }

  DType logits_dtype() const override {
    return options_.quant.scheme_for(LayerRole::lm_head) == "bf16" ? DType::f32 : DType::bf16;
  }

  void forward(const StepInputs& in, const KvCache& cache, const Tensor& logits, cudaStream_t stream) override {
    const int64_t t = in.token_ids.size(0), h = config_.hidden_size, hd = config_.head_dim, nq = shards_.heads,
                  nkv = shards_.kv_heads;  // this rank's heads
    const float eps = float(config_.rms_norm_eps), scale = float(1.0 / std::sqrt(double(hd)));
    const Device dev = options_.device;
    const Tensor& inv_freq = rope_frequencies_for(in.attention.max_seq_len, stream);
    Tensor x = Tensor::empty({t, h}, DType::bf16, dev);    // residual stream
    Tensor x_next;  // the residual's other buffer, where an MoE block's norm writes it out of place
    Tensor n = Tensor::empty({t, h}, DType::bf16, dev);    // normalized input of the next block
    Tensor mlp = Tensor::empty({t, h}, DType::bf16, dev);  // output of the last MLP, not yet added
    // An MoE block whose combine waits for the next norm (one token, no all-reduce, no shared expert).
    FusedMoELayer* pending = nullptr;
    const auto add_mlp_rmsnorm = [&](const Tensor& weight) {  // x += mlp; n = norm(x)
      if (pending) pending->combine_add_rmsnorm(x, weight, eps, n, stream);
      else ops::add_rmsnorm(x, mlp, weight, eps, n, stream);
      pending = nullptr;
    };
    // Projections: one fused [T, (nq + 2·nkv)·hd] output, or (replicated KV heads) q [T, nq·hd] and
    // kv [T, 2·nkv·hd]; q2d, k2d, v2d are [T, heads·hd] views into them.
    const bool fused = shards_.kv_tp == shards_.tp;
    Tensor qkv = Tensor::empty({t, fused ? (nq + 2 * nkv) * hd : nq * hd}, DType::bf16, dev);
    Tensor kv = fused ? Tensor() : Tensor::empty({t, 2 * nkv * hd}, DType::bf16, dev);
    const Tensor q2d = qkv.narrow(1, 0, nq * hd);
    const Tensor k2d = fused ? qkv.narrow(1, nq * hd, nkv * hd) : kv.narrow(1, 0, nkv * hd);
    const Tensor v2d = fused ? qkv.narrow(1, (nq + nkv) * hd, nkv * hd) : kv.narrow(1, nkv * hd, nkv * hd);
    const auto heads = [&](const Tensor& x2d, int64_t count) {  // [T, count, hd], rows strided as x2d's
      return x2d.as_strided({t, count, hd}, {x2d.strides()[0], hd, 1});
    };
    const Tensor q = heads(q2d, nq), k = heads(k2d, nkv), v = heads(v2d, nkv);
    Tensor attn = Tensor::empty({t, nq, hd}, DType::bf16, dev);
    Tensor attn_out = Tensor::empty({t, h}, DType::bf16, dev);
    Tensor workspace = dev == Device::cuda ? Tensor::empty({int64_t(paged_attention_workspace_bytes(
                                                               t, int(nq), int(nkv), int(hd)))},
                                                           DType::u8, dev)
                                           : Tensor();

    ops::embedding(in.token_ids, embed_->weight(0), shards_.vocab_begin, x, stream);  // zeros outside this rank's rows
    all_reduce(x, stream);
    for (size_t l = 0; l < layers_.size(); ++l) {
      DecoderLayer& layer = layers_[l];
      const WeightSet& w = *layer.norms;
      if (l == 0)
        ops::rmsnorm(x, w.weight(0), eps, n, stream);
      else
        add_mlp_rmsnorm(w.weight(0));
      layer.qkv->forward(n, qkv, stream);
      if (layer.kv) layer.kv->forward(n, kv, stream);
      if (spec_.qk_norm == QkNorm::full) {
        norm_across_ranks(q2d, w.weight(2), 1, eps, stream);
        norm_across_ranks(k2d, w.weight(3), shards_.kv_replicas(), eps, stream);
      }
      // q, k = qk_norm(q, k) (per head); q, k = rope(q, k); cache[slots] = k, v: one launch.
      const bool per_head = spec_.qk_norm == QkNorm::per_head;
      ops::qk_norm_rope_kv_write(q, k, v, per_head ? &w.weight(2) : nullptr, per_head ? &w.weight(3) : nullptr, eps,
                                 in.positions, inv_freq, attention_scaling_, in.kv_slots, cache.k(int(l)),
                                 cache.v(int(l)), stream);
      ops::paged_attention(q, cache.k(int(l)), cache.v(int(l)), in.attention, scale, workspace, attn, stream);
      layer.o_proj->forward(attn.view({t, nq * hd}), attn_out, stream);
      all_reduce(attn_out, stream);
      if (layer.experts) {
        // x += attention; n = norm(x); router logits, then the experts. At one token the norm runs
        // inside the router launch, writing the new residual to the other buffer.
        Tensor router_logits = Tensor::empty({t, config_.num_experts}, DType::f32, dev);
        if (!x_next.defined() && t == 1) x_next = Tensor::empty({t, h}, DType::bf16, dev);
        const bool defer_combine = !options_.comm && !layer.shared_gate_up;
        if (layer.experts->forward_after_norm(x, attn_out, w.weight(1), eps, x_next, n, *layer.router, router_logits,
                                              mlp, defer_combine, stream)) {
          std::swap(x, x_next);
          if (layer.experts->combine_pending()) pending = layer.experts.get();
        } else {
          ops::add_rmsnorm(x, attn_out, w.weight(1), eps, n, stream);
          layer.experts->forward(n, *layer.router, router_logits, mlp, stream);
        }
        if (layer.shared_gate_up) {
          const int64_t is = layer.shared_down->input_size_per_partition();
          Tensor gate_up = Tensor::empty({t, 2 * is}, DType::bf16, dev), act = Tensor::empty({t, is}, DType::bf16, dev);
          Tensor shared = Tensor::empty({t, h}, DType::bf16, dev), gate = Tensor::empty({t, 1}, DType::f32, dev);
          layer.shared_gate_up->forward(n, gate_up, stream);
          ops::silu_mul(gate_up, act, stream);
          layer.shared_down->forward(act, shared, stream);
          layer.shared_gate->forward(n, gate, stream);
          ops::add_sigmoid_gated(mlp, shared, gate, stream);  // mlp += sigmoid(gate) · shared
        }
      } else {
        ops::add_rmsnorm(x, attn_out, w.weight(1), eps, n, stream);  // x += attention; n = norm(x)
        const int64_t i = layer.down->input_size_per_partition();
        Tensor gate_up = Tensor::empty({t, 2 * i}, DType::bf16, dev), act = Tensor::empty({t, i}, DType::bf16, dev);
        layer.gate_up->forward(n, gate_up, stream);
        ops::silu_mul(gate_up, act, stream);
        layer.down->forward(act, mlp, stream);
      }
      all_reduce(mlp, stream);  // one per MLP block, the shared expert's part included
    }
    add_mlp_rmsnorm(final_norm_->weight(0));
    const int64_t r = in.logit_rows.size(0);
    Tensor rows = Tensor::empty({r, h}, DType::bf16, dev);
    ops::embedding(in.logit_rows, n, 0, rows, stream);  // gather the rows whose logits are wanted
    if (!options_.comm) {
      lm_head_->forward(rows, logits, stream);
      return;
    }
    Tensor mine = Tensor::empty({r, shards_.vocab}, logits.dtype(), dev);  // this rank's vocabulary columns
    lm_head_->forward(rows, mine, stream);
    Tensor all = Tensor::empty({shards_.tp * r, shards_.vocab}, logits.dtype(), dev);  // rank j's in rows [j·R, (j+1)·R)
    options_.comm->all_gather(mine, all, stream);
    for (int64_t j = 0; j < shards_.tp; ++j)
      logits.narrow(1, j * shards_.vocab, shards_.vocab).copy_from(all.slice(j * r, (j + 1) * r), stream);
  }

 private:
  // tp_size 0: cut as the model is (the KV projections of replicated heads are cut by KV head).
  std::unique_ptr<LinearLayer> linear(const std::string& name, int64_t input_size, std::vector<LinearPart> parts,
                                      bool bias, LinearParallel parallel, LayerRole role, int tp_size = 0,
                                      int tp_rank = 0) const {
    LinearConfig c;
    c.tp_size = tp_size ? tp_size : shards_.tp;
    c.tp_rank = tp_size ? tp_rank : shards_.rank;
    c.name = name;
    c.input_size = input_size;
    c.parts = std::move(parts);
    c.bias = bias;
    c.parallel = parallel;
    c.role = role;
    c.device = options_.device;
    return std::make_unique<LinearLayer>(std::move(c), options_.quant);
  }

  void all_reduce(const Tensor& x, cudaStream_t stream) const {
    if (options_.comm) options_.comm->all_reduce_sum(x, stream);
  }

  // OLMoE's q/k norm spans all heads, which tensor parallelism spreads over the ranks: gather the
  // ranks' [T, w] slices (x, rows strided), normalize whole [T, W] rows, keep this rank's slice.
  // replicas: ranks holding the same slice (replicated KV heads), of which one is used.
  void norm_across_ranks(Tensor x, const Tensor& weight, int replicas, float eps, cudaStream_t stream) const {
    if (!options_.comm) {
      ops::rmsnorm(x, weight, eps, x, stream);
      return;
    }
    const Device dev = options_.device;
    const int64_t t = x.size(0), w = x.size(1), slices = shards_.tp / replicas;
    Tensor mine = Tensor::empty({t, w}, DType::bf16, dev);
    mine.copy_from(x, stream);
    Tensor all = Tensor::empty({shards_.tp * t, w}, DType::bf16, dev);  // rank j's in rows [j·T, (j+1)·T)
    options_.comm->all_gather(mine, all, stream);
    Tensor full = Tensor::empty({t, slices * w}, DType::bf16, dev);  // [T, W]
    for (int64_t j = 0; j < slices; ++j) {
      const int64_t from = j * replicas;  // the first rank holding slice j
      full.narrow(1, j * w, w).copy_from(all.slice(from * t, (from + 1) * t), stream);
    }
    ops::rmsnorm(full, weight, eps, full, stream);
    x.copy_from(full.narrow(1, (shards_.rank / replicas) * w, w), stream);
  }

  // Dynamic NTK scaling changes the frequencies with the sequence length; the others never do.
  // The table lives in one buffer made at construction, so a step allocates nothing for it.
  const Tensor& rope_frequencies_for(int64_t max_seq_len, cudaStream_t stream) {
    const int64_t key = rope_.type == RopeType::dynamic ? std::max(max_seq_len, rope_.max_position_embeddings) : 0;
    if (key != inv_freq_key_) {
      const RopeFrequencies f = rope_frequencies(rope_, key);
      const Tensor host = Tensor::wrap(const_cast<float*>(f.inv_freq.data()), {int64_t(f.inv_freq.size())},
                                       DType::f32, Device::cpu);
      inv_freq_.copy_from(host, stream);  // pageable source: complete on return
      attention_scaling_ = f.attention_scaling;
      inv_freq_key_ = key;
    }
    return inv_freq_;
  }

  ModelConfig config_;
  DecoderSpec spec_;
  ModelOptions options_;
  Shards shards_;
  RopeConfig rope_;
  Tensor inv_freq_;  // f32 [head_dim / 2] on the model's device
  float attention_scaling_ = 1.f;
  int64_t inv_freq_key_ = -1;
  std::unique_ptr<WeightSet> embed_, final_norm_;
  std::vector<DecoderLayer> layers_;
  std::unique_ptr<LinearLayer> lm_head_;
};

}  // namespace

std::unique_ptr<CausalLM> make_causal_lm(const ModelConfig& config, const ModelOptions& options) {
  static const std::map<std::string, DecoderSpec (*)(const ModelConfig&)> architectures = {
      {"llama", llama_spec},         {"qwen2", llama_spec},   {"qwen3", llama_spec},         {"qwen3_moe", qwen3_moe_spec},
      {"mixtral", mixtral_spec},     {"olmoe", olmoe_spec},   {"qwen2_moe", qwen2_moe_spec}};
  const auto it = architectures.find(config.model_type);
  if (it == architectures.end()) {
    std::string known;
    for (const auto& [name, fn] : architectures) known += cat(known.empty() ? "" : ", ", name);
    fail(config.file, ": model_type ", config.model_type, " is not supported (supported: ", known, ")");
  }
  return std::make_unique<DecoderLM>(config, it->second(config), options);
}

}  // namespace mxmoe
