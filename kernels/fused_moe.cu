// Fused MoE on CUDA: routing -> device permutation -> decode or prefill expert path -> weighted
// combine. Everything is enqueued on `stream` with no host sync (capturable in a CUDA graph once
// the workspace has grown to the call's size). CPU tensors go to fused_moe_ref.
#include "engine/cuda_check.h"
#include "kernels/fused_moe.h"
#include "kernels/moe_decode.h"
#include "kernels/moe_permute.h"
#include "kernels/w8a16_gemm.h"

namespace mxmoe {

// Device byte buffers, grown on demand; each call views them at the shapes it needs.
struct MoeWorkspace::Impl {
  Tensor topk_ids, topk_weights, pair_rows, sorted_pairs, chunk_counts;  // [T*k] i32/f32, [chunks, E] i32
  Tensor expert_offsets, active_experts, num_active;                     // [E+1], [E], [1] i32
  Tensor xs, gate_up, act, y;  // [T*k, H] bf16, [T*k, 2I] bf16, [T*k, I] bf16, [T*k, H] f32 (decode) | bf16

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

  const Tensor ids = Impl::take(ws.topk_ids, {pairs}, DType::i32);
  const Tensor weights = Impl::take(ws.topk_weights, {pairs}, DType::f32);
  MoePermuteBuffers pb;
  pb.perm.expert_offsets = Impl::take(ws.expert_offsets, {s.experts + 1}, DType::i32);
  pb.perm.sorted_pairs = Impl::take(ws.sorted_pairs, {pairs}, DType::i32);
  pb.perm.active_experts = Impl::take(ws.active_experts, {s.experts}, DType::i32);
  pb.perm.num_active = Impl::take(ws.num_active, {1}, DType::i32);
  pb.pair_rows = Impl::take(ws.pair_rows, {pairs}, DType::i32);
  pb.chunk_counts = Impl::take(ws.chunk_counts, {moe_permute_chunks(pairs), s.experts}, DType::i32);
  moe_route_permute(router_logits, k, routing.renormalize, ids, weights, pb, stream);
  const MoePermutation& perm = pb.perm;

  const Tensor act = Impl::take(ws.act, {pairs, s.inter}, DType::bf16);
  if (path == MoePath::decode || (path == MoePath::automatic && s.tokens <= kMoeDecodeMaxTokens)) {
    // Pair-indexed: act and y rows are pairs t*k + slot; the kernels read each active expert once.
    // (Fusing the combine into the down kernel, the last block of each 128-row group of H summing
    // the slots, measured no gain on H100: Qwen3-30B-A3B T=1 32.4 vs 32.2 us, bench-moe.)
    const Tensor y = Impl::take(ws.y, {pairs, s.hidden}, DType::f32);
    if (w.quantized()) {
      moe_gate_up_decode(x, w.w13_mx, perm, k, act, stream);
      moe_down_decode(act, w.w2_mx, perm, y, stream);
    } else {
      moe_gate_up_decode(x, w.w13, perm, k, act, stream);
      moe_down_decode(act, w.w2, perm, y, stream);
    }
    moe_combine(y, weights, nullptr, k, out, stream);
    return;
  }
  // Expert-ordered rows: row r is pair sorted_pairs[r]; the grouped GEMMs use expert_offsets.
  const Tensor xs = Impl::take(ws.xs, {pairs, s.hidden}, DType::bf16);
  const Tensor gate_up = Impl::take(ws.gate_up, {pairs, 2 * s.inter}, DType::bf16);
  const Tensor y = Impl::take(ws.y, {pairs, s.hidden}, DType::bf16);
  moe_gather_rows(x, perm, k, xs, stream);
  if (w.quantized()) w8a16_grouped_gemm(xs, w.w13_mx, perm.expert_offsets, gate_up, stream);
  else bf16_grouped_gemm(xs, w.w13, perm.expert_offsets, gate_up, stream);
  moe_silu_mul(gate_up, act, stream);
  if (w.quantized()) w8a16_grouped_gemm(act, w.w2_mx, perm.expert_offsets, y, stream);
  else bf16_grouped_gemm(act, w.w2, perm.expert_offsets, y, stream);
  moe_combine(y, weights, &pb.pair_rows, k, out, stream);
}

}  // namespace mxmoe
