// Fused MoE on CUDA: routing -> device permutation -> decode or prefill expert path -> weighted
// combine. Everything is enqueued on `stream` with no host sync (capturable in a CUDA graph once
// the workspace has grown to the call's size). CPU tensors go to fused_moe_ref.
#include <type_traits>

#include "engine/cuda_check.h"
#include "engine/env.h"
#include "kernels/fused_moe.h"
#include "kernels/moe_decode.h"
#include "kernels/moe_permute.h"
#include "kernels/moe_routing.h"
#include "kernels/w8a16_gemm.h"

namespace mxmoe {

// Device byte buffers, grown on demand; each call views them at the shapes it needs.
struct MoeWorkspace::Impl {
  Tensor topk_ids, topk_weights, pair_rows, sorted_pairs, chunk_counts;  // [T*k] i32/f32, [chunks, E] i32
  Tensor expert_offsets, active_experts, num_active;                     // [E+1], [E], [1] i32
  Tensor blocks_done;  // [1] i32, zeroed once: the fused router kernel's counter (it leaves it zero)
  Tensor slot_counters;  // i32, zeroed once: moe_experts_decode's (it leaves them zero)
  // [T*k, H] bf16, [T*k, 2I] bf16 (bf16 weights, or MXMOE_MOE_GATED_GEMM=0), [T*k, I] bf16,
  // [T*k, H] f32 (decode) | bf16
  Tensor xs, gate_up, act, y;

  // A view of `shape` and `dtype` over `buf`, reallocated when too small (freeing the old
  // buffer synchronizes the device: only on growth, never in a steady state).
  static Tensor take(Tensor& buf, const Shape& shape, DType dtype) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    const int64_t bytes = n * int64_t(dtype_size(dtype));
    if (!buf.defined() || buf.numel() < bytes) buf = Tensor::empty({bytes}, DType::u8, Device::cuda);
    return Tensor::wrap(buf.data(), shape, dtype, Device::cuda);
  }
};

MoeWorkspace::MoeWorkspace() : impl_(std::make_unique<Impl>()) {}
MoeWorkspace::~MoeWorkspace() = default;
MoeWorkspace::MoeWorkspace(MoeWorkspace&&) noexcept = default;
MoeWorkspace& MoeWorkspace::operator=(MoeWorkspace&&) noexcept = default;
MoeWorkspace::Impl& MoeWorkspace::impl() { return *impl_; }

namespace {

// The routing results and permutation of one call, viewed over the workspace.
struct RoutingBuffers {
  Tensor ids, weights;  // [T*k] i32, f32
  MoePermuteBuffers pb;
};

RoutingBuffers routing_buffers(MoeWorkspace::Impl& ws, const MoeShape& s, int k, cudaStream_t stream) {
  using Impl = MoeWorkspace::Impl;
  const int64_t pairs = s.tokens * k;
  RoutingBuffers b;
  b.ids = Impl::take(ws.topk_ids, {pairs}, DType::i32);
  b.weights = Impl::take(ws.topk_weights, {pairs}, DType::f32);
  b.pb.perm.expert_offsets = Impl::take(ws.expert_offsets, {s.experts + 1}, DType::i32);
  b.pb.perm.sorted_pairs = Impl::take(ws.sorted_pairs, {pairs}, DType::i32);
  b.pb.perm.active_experts = Impl::take(ws.active_experts, {s.experts}, DType::i32);
  b.pb.perm.num_active = Impl::take(ws.num_active, {1}, DType::i32);
  b.pb.pair_rows = Impl::take(ws.pair_rows, {pairs}, DType::i32);
  b.pb.chunk_counts = Impl::take(ws.chunk_counts, {moe_permute_chunks(pairs), s.experts}, DType::i32);
  if (!ws.blocks_done.defined()) {  // first call (before any graph capture), ordered on the stream
    ws.blocks_done = Tensor::empty({1}, DType::i32, Device::cuda);
    CUDA_CHECK(cudaMemsetAsync(ws.blocks_done.data(), 0, sizeof(int32_t), stream));
  }
  b.pb.blocks_done = ws.blocks_done;
  if (!ws.slot_counters.defined()) {
    ws.slot_counters = Tensor::empty({moe_experts_counters(kMoeMaxTopK)}, DType::i32, Device::cuda);
    CUDA_CHECK(cudaMemsetAsync(ws.slot_counters.data(), 0, ws.slot_counters.nbytes(), stream));
  }
  return b;
}

// One token with MXFP8 experts: gate/up and down in one launch where it fits and pays
// (moe_experts_decode; MXMOE_MOE_ONE_LAUNCH=0: the two kernels, for comparison). A block copies its
// 128 W2 rows (128·I bytes) only after its gate/up share, while the two-kernel down prefetches under
// PDL; measured on the H100 (`VAR=MXMOE_MOE_ONE_LAUNCH .ci/device-ab`): Qwen3-30B-A3B (I = 768)
// 1.8% faster per step, OLMoE (I = 1024) 1.9% slower. So up to I = 768.
constexpr int64_t kOneLaunchMaxInter = 768;
bool one_launch(const MoeWeights& w, const MoeShape& s, int k) {
  static const bool on = env_flag("MXMOE_MOE_ONE_LAUNCH", true);
  return on && w.quantized() && s.inter <= kOneLaunchMaxInter && moe_experts_one_launch_fits(s.hidden, s.inter, k);
}

// Decode experts: pair-indexed, act and y rows are pairs t*k + slot; the kernels read each active
// expert once, routed by `route`: the permutation, or (one token) MoeTokenRoute, whose down kernel
// writes the routing weights itself. Returns y [T·k, H] f32 (in the workspace), before the combine.
// (Fusing the combine into the down kernel, the last block of each 128-row group of H summing the
// slots, measured no gain on H100: Qwen3-30B-A3B T=1 32.4 vs 32.2 us, bench-moe.)
template <class Route>
Tensor decode_expert_slots(const Tensor& x, const MoeWeights& w, const MoeShape& s, int k, const Route& route,
                           MoeWorkspace::Impl& ws, cudaStream_t stream) {
  using Impl = MoeWorkspace::Impl;
  const int64_t pairs = s.tokens * k;
  const Tensor act = Impl::take(ws.act, {pairs, s.inter}, DType::bf16);
  const Tensor y = Impl::take(ws.y, {pairs, s.hidden}, DType::f32);
  if constexpr (std::is_same_v<Route, MoeTokenRoute>)
    if (one_launch(w, s, k)) {
      moe_experts_decode(x, w.w13_mx, w.w2_mx, route, act, y, ws.slot_counters, stream);
      return y;
    }
  const auto experts = [&](const auto& w13, const auto& w2) {
    if constexpr (std::is_same_v<Route, MoeTokenRoute>) moe_gate_up_decode(x, w13, route, act, stream);
    else moe_gate_up_decode(x, w13, route, k, act, stream);
    moe_down_decode(act, w2, route, y, stream);
  };
  if (w.quantized()) experts(w.w13_mx, w.w2_mx);
  else experts(w.w13, w.w2);
  return y;
}

template <class Route>
void decode_experts(const Tensor& x, const MoeWeights& w, const MoeShape& s, int k, const Route& route,
                    const Tensor& weights, const Tensor& out, MoeWorkspace::Impl& ws, cudaStream_t stream) {
  moe_combine(decode_expert_slots(x, w, s, k, route, ws, stream), weights, nullptr, k, out, stream);
}

// One token: the expert kernels route it themselves from its logits, with no routing launch
// (MXMOE_MOE_TOKEN_ROUTE=0: the routing + permutation launch instead, for comparison). The
// logits must come from a kernel before the gate/up one (the down kernel reads them before its wait).
bool routes_itself(const MoeShape& s) {
  static const bool token_route = env_flag("MXMOE_MOE_TOKEN_ROUTE", true);
  return s.tokens == 1 && token_route;
}
MoeTokenRoute token_route(const Tensor& router_logits, const MoeRouting& routing, const RoutingBuffers& rb) {
  return {router_logits, routing.top_k, routing.renormalize, rb.ids, rb.weights};
}
void route_token_itself(const Tensor& x, const Tensor& router_logits, const MoeWeights& w, const MoeRouting& routing,
                        const MoeShape& s, const RoutingBuffers& rb, const Tensor& out, MoeWorkspace::Impl& ws,
                        cudaStream_t stream) {
  decode_experts(x, w, s, routing.top_k, token_route(router_logits, routing, rb), rb.weights, out, ws, stream);
}

// MXFP8 prefill: SiLU·up in the gate/up GEMM's epilogue (w8a16_grouped_gemm_silu_mul), or with
// MXMOE_MOE_GATED_GEMM=0 the [pairs, 2I] product stored and a silu_mul pass, for comparison.
bool gated_gemm() {
  static const bool gated = env_flag("MXMOE_MOE_GATED_GEMM", true);
  return gated;
}

}  // namespace

void fused_moe(const Tensor& x, const Tensor& router_logits, const MoeWeights& w, const MoeRouting& routing,
               const Tensor& out, MoeWorkspace& workspace, cudaStream_t stream) {
  fused_moe(x, router_logits, w, routing, out, workspace, stream, MoePath::automatic);
}

void fused_moe(const Tensor& x, const Tensor& router_logits, const MoeWeights& w, const MoeRouting& routing,
               const Tensor& out, MoeWorkspace& workspace, cudaStream_t stream, MoePath path) {
  if (x.device() == Device::cpu) return fused_moe_ref(x, router_logits, w, routing, out);
  const MoeShape s = check_fused_moe_args(x, router_logits, w, routing, out, "fused_moe");
  if (s.tokens == 0) return;
  const int k = routing.top_k;
  const int64_t pairs = s.tokens * k;
  MoeWorkspace::Impl& ws = workspace.impl();
  using Impl = MoeWorkspace::Impl;

  const RoutingBuffers rb = routing_buffers(ws, s, k, stream);
  if (path != MoePath::prefill && routes_itself(s))
    return route_token_itself(x, router_logits, w, routing, s, rb, out, ws, stream);
  const Tensor& weights = rb.weights;
  const MoePermuteBuffers& pb = rb.pb;
  moe_route_permute(router_logits, k, routing.renormalize, rb.ids, weights, pb, stream);
  const MoePermutation& perm = pb.perm;

  if (path == MoePath::decode || (path == MoePath::automatic && moe_prefers_decode(s.tokens, k, s.experts)))
    return decode_experts(x, w, s, k, perm, weights, out, ws, stream);
  const Tensor act = Impl::take(ws.act, {pairs, s.inter}, DType::bf16);
  // Expert-ordered rows: row r is pair sorted_pairs[r]; the grouped GEMMs use expert_offsets.
  const Tensor xs = Impl::take(ws.xs, {pairs, s.hidden}, DType::bf16);
  const Tensor y = Impl::take(ws.y, {pairs, s.hidden}, DType::bf16);
  moe_gather_rows(x, perm, k, xs, stream);
  if (w.quantized() && gated_gemm()) {
    w8a16_grouped_gemm_silu_mul(xs, w.w13_mx, perm.expert_offsets, act, stream);
  } else {
    const Tensor gate_up = Impl::take(ws.gate_up, {pairs, 2 * s.inter}, DType::bf16);
    if (w.quantized()) w8a16_grouped_gemm(xs, w.w13_mx, perm.expert_offsets, gate_up, stream);
    else bf16_grouped_gemm(xs, w.w13, perm.expert_offsets, gate_up, stream);
    moe_silu_mul(gate_up, act, stream);
  }
  if (w.quantized()) w8a16_grouped_gemm(act, w.w2_mx, perm.expert_offsets, y, stream);
  else bf16_grouped_gemm(act, w.w2, perm.expert_offsets, y, stream);
  moe_combine(y, weights, &pb.pair_rows, k, out, stream);
}

MoeSlots fused_moe_token_slots(const Tensor& x, const Tensor& router_logits, const MoeWeights& w,
                               const MoeRouting& routing, MoeWorkspace& workspace, cudaStream_t stream) {
  const char* op = "fused_moe_token_slots";
  MXMOE_CHECK(x.device() == Device::cuda && x.dim() == 2 && x.size(0) == 1, op, ": one token on CUDA, got x ",
              shape_str(x.shape()), " on ", x.device() == Device::cuda ? "CUDA" : "the CPU");
  const MoeShape s = check_fused_moe_args(x, router_logits, w, routing, x, op);  // x stands in for the unwritten out
  MoeWorkspace::Impl& ws = workspace.impl();
  const RoutingBuffers rb = routing_buffers(ws, s, routing.top_k, stream);
  const Tensor y = decode_expert_slots(x, w, s, routing.top_k, token_route(router_logits, routing, rb), ws, stream);
  return {y, rb.weights, one_launch(w, s, routing.top_k)};
}

bool fused_moe_router_fusable(const Tensor& x, const Tensor& router_weight, const MoeRouting& routing) {
  return x.device() == Device::cuda && x.dim() == 2 && x.size(0) <= kMoeDecodeMaxTokens && router_weight.dim() == 2 &&
         moe_router_fusable(x.size(0), router_weight.size(0), x.size(1), routing.top_k);
}

void fused_moe_with_router(const Tensor& x, const Tensor& router_weight, const Tensor& router_logits,
                           const MoeWeights& w, const MoeRouting& routing, const Tensor& out, MoeWorkspace& workspace,
                           cudaStream_t stream) {
  const MoeShape s = check_fused_moe_args(x, router_logits, w, routing, out, "fused_moe_with_router");
  if (s.tokens == 0) return;
  MXMOE_CHECK(fused_moe_router_fusable(x, router_weight, routing), "fused_moe_with_router: T = ", x.size(0),
              " tokens, router_weight ", shape_str(router_weight.shape()), ", top_k = ", routing.top_k,
              " cannot route in one launch (see fused_moe_router_fusable)");
  MoeWorkspace::Impl& ws = workspace.impl();
  const RoutingBuffers rb = routing_buffers(ws, s, routing.top_k, stream);
  if (routes_itself(s)) {
    moe_router_logits(x, router_weight, router_logits, stream);
    return route_token_itself(x, router_logits, w, routing, s, rb, out, ws, stream);
  }
  moe_router_route_permute(x, router_weight, router_logits, routing.top_k, routing.renormalize, rb.ids, rb.weights,
                           rb.pb, stream);
  decode_experts(x, w, s, routing.top_k, rb.pb.perm, rb.weights, out, ws, stream);
}

}  // namespace mxmoe
