// Fused-MoE benchmark (issue 5): the whole fused_moe call (router, permutation, experts, combine)
// on real model shapes, MXFP8 and bf16 expert weights.
//  decode (T = 1, 8): GB/s on the bytes of the experts actually used (fp8 + scales, or bf16),
//    against the device copy bandwidth measured in this run (target >= 80%). 16 routing patterns
//    are cycled so consecutive calls touch different experts (not L2-resident). Times: eager
//    launches, and a CUDA graph of the 16 calls replayed (per call), as a decode step would run;
//    also the two expert kernels alone (routing precomputed), the routing + permutation alone and
//    the combine alone, to show each piece's share.
//  router (T = 1, 8, MXFP8): the model's way, the router logits GEMM on cuBLASLt (bf16 weight, f32
//    logits) then fused_moe, against fused_moe_with_router (the logits GEMV inside the routing
//    launch), graph-replayed over 16 inputs x (so the routing and the experts read change); also
//    the router + routing + permutation alone both ways.
//  prefill (T = 4096): TFLOP/s (6·T·k·H·I flops) against cuBLASLt bf16 running the two dense
//    GEMMs of the same shapes ([T·k, H]·[2I, H]ᵀ and [T·k, I]·[H, I]ᵀ, same total flops).
// apps/bench_moe_torch.py runs the same shapes with torch._grouped_mm for comparison.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <set>

#include "apps/bench_util.h"
#include "kernels/cublaslt_gemm.h"
#include "kernels/fused_moe.h"
#include "kernels/moe_decode.h"
#include "kernels/moe_permute.h"
#include "kernels/w8a16_gemm.h"

using namespace mxmoe;

namespace {

struct Model {
  const char* name;
  int64_t experts, hidden, inter;
  int top_k;
};

// Expert weights in both forms; MXFP8 quantized from the bf16 values, one expert at a time.
struct Experts {
  MoeWeights mx, bf16;
};

Experts make_experts(const Model& m, cudaStream_t stream) {
  Experts e;
  e.bf16.w13 = bench::random_bf16({m.experts, 2 * m.inter, m.hidden}, 1, 1.f / std::sqrt(float(m.hidden)), stream);
  e.bf16.w2 = bench::random_bf16({m.experts, m.hidden, m.inter}, 2, 1.f / std::sqrt(float(m.inter)), stream);
  e.mx.w13_mx = mxfp8_empty(e.bf16.w13.shape(), Device::cuda);
  e.mx.w2_mx = mxfp8_empty(e.bf16.w2.shape(), Device::cuda);
  mxfp8_quantize(e.bf16.w13, e.mx.w13_mx, ScaleRule::rceil, stream);
  mxfp8_quantize(e.bf16.w2, e.mx.w2_mx, ScaleRule::rceil, stream);
  return e;
}

double expert_bytes(const Model& m, bool mx) {
  const double weights = 3.0 * double(m.hidden) * double(m.inter);
  return mx ? weights * (1.0 + 1.0 / kMxBlock) : weights * 2.0;
}

// Router logits [T, E] f32 on the device, and the number of distinct experts they route to.
struct Routed {
  Tensor logits;
  int distinct;
};

Routed random_routing(const Model& m, int64_t tokens, std::mt19937_64& rng) {
  Tensor host = Tensor::empty({tokens, m.experts}, DType::f32, Device::cpu);
  std::normal_distribution<float> dist;
  float* l = host.data_as<float>();
  std::set<int64_t> used;
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<std::pair<float, int64_t>> row;
    for (int64_t e = 0; e < m.experts; ++e) row.push_back({l[t * m.experts + e] = dist(rng), -e});
    std::partial_sort(row.begin(), row.begin() + m.top_k, row.end(), std::greater<>());
    for (int k = 0; k < m.top_k; ++k) used.insert(-row[size_t(k)].second);
  }
  return {host.to(Device::cuda), int(used.size())};
}

void bench_decode(const Model& m, const Experts& ex, int64_t tokens, double copy_gbs, cudaStream_t stream) {
  constexpr int kPatterns = 16;
  std::mt19937_64 rng(uint64_t(tokens) * 7919 + uint64_t(m.experts));
  std::vector<Routed> routes;
  double bytes[2] = {0, 0};
  for (int i = 0; i < kPatterns; ++i) {
    routes.push_back(random_routing(m, tokens, rng));
    for (int mx = 0; mx < 2; ++mx) bytes[mx] += routes.back().distinct * expert_bytes(m, mx) / kPatterns;
  }
  const Tensor x = bench::random_bf16({tokens, m.hidden}, 3, 1.f, stream);
  Tensor out = Tensor::empty({tokens, m.hidden}, DType::bf16, Device::cuda);
  const MoeRouting routing{m.top_k, true};
  // The routing of every pattern precomputed, for timing the expert kernels alone.
  std::vector<MoePermuteBuffers> perms;
  const int64_t pairs = tokens * m.top_k;
  Tensor ids = Tensor::empty({pairs}, DType::i32, Device::cuda), weights = Tensor::empty({pairs}, DType::f32, Device::cuda);
  for (const Routed& r : routes) {
    perms.push_back(moe_permute_buffers(pairs, m.experts));
    moe_route_permute(r.logits, m.top_k, true, ids, weights, perms.back(), stream);
  }
  Tensor act = Tensor::empty({pairs, m.inter}, DType::bf16, Device::cuda);
  Tensor y = Tensor::empty({pairs, m.hidden}, DType::f32, Device::cuda);
  // The pieces of one call, each timed alone (per call, graph of kPatterns calls).
  const double route_ms = bench::graph_ms_per_call(stream, kPatterns, [&](int i) {
    moe_route_permute(routes[size_t(i % kPatterns)].logits, m.top_k, true, ids, weights, perms[size_t(i % kPatterns)],
                      stream);
  });
  const double combine_ms =
      bench::graph_ms_per_call(stream, kPatterns, [&](int) { moe_combine(y, weights, nullptr, m.top_k, out, stream); });
  for (int mx = 1; mx >= 0; --mx) {
    const MoeWeights& w = mx ? ex.mx : ex.bf16;
    MoeWorkspace ws;
    auto call = [&](int i) { fused_moe(x, routes[size_t(i % kPatterns)].logits, w, routing, out, ws, stream); };
    auto experts_only = [&](int i) {
      const MoePermutation& perm = perms[size_t(i % kPatterns)].perm;
      if (mx) {
        moe_gate_up_decode(x, w.w13_mx, perm, m.top_k, act, stream);
        moe_down_decode(act, w.w2_mx, perm, y, stream);
      } else {
        moe_gate_up_decode(x, w.w13, perm, m.top_k, act, stream);
        moe_down_decode(act, w.w2, perm, y, stream);
      }
    };
    const double eager_ms = bench::median_ms(stream, call, 5, 48);
    const double graph_ms = bench::graph_ms_per_call(stream, kPatterns, call);
    const double experts_ms = bench::graph_ms_per_call(stream, kPatterns, experts_only);
    const double gbs = bytes[mx] / (graph_ms * 1e-3) / 1e9;
    std::printf("| decode %-14s T=%-4lld | %-5s | %6.1f experts, %7.1f MB | %8.1f us | %8.1f us | %8.1f us | %6.0f GB/s "
                "| %5.1f%% | %6.1f us | %6.1f us |\n",
                m.name, (long long)tokens, mx ? "mxfp8" : "bf16", bytes[mx] / expert_bytes(m, mx), bytes[mx] / 1e6,
                eager_ms * 1e3, graph_ms * 1e3, experts_ms * 1e3, gbs, 100 * gbs / copy_gbs, route_ms * 1e3,
                combine_ms * 1e3);
  }
}

// Where the decode path (GEMV-like, each active expert read once per 16 pairs) stops beating the
// prefill path (gather + grouped tensor-core GEMMs): fused_moe per call with each path forced, MXFP8.
void bench_crossover(const Model& m, const Experts& ex, int64_t tokens, cudaStream_t stream) {
  constexpr int kPatterns = 8;
  std::mt19937_64 rng(uint64_t(tokens) * 104729 + uint64_t(m.experts));
  std::vector<Routed> routes;
  for (int i = 0; i < kPatterns; ++i) routes.push_back(random_routing(m, tokens, rng));
  const Tensor x = bench::random_bf16({tokens, m.hidden}, 5, 1.f, stream);
  Tensor out = Tensor::empty({tokens, m.hidden}, DType::bf16, Device::cuda);
  const MoeRouting routing{m.top_k, true};
  double ms[2];
  for (int path = 0; path < 2; ++path) {
    MoeWorkspace ws;
    ms[path] = bench::graph_ms_per_call(stream, kPatterns, [&](int i) {
      fused_moe(x, routes[size_t(i % kPatterns)].logits, ex.mx, routing, out, ws, stream,
                path == 0 ? MoePath::decode : MoePath::prefill);
    });
  }
  std::printf("| %-14s | %5lld | %6.1f | %9.1f us | %9.1f us | %5.2fx |\n", m.name, (long long)tokens,
              double(tokens * m.top_k) / double(m.experts), ms[0] * 1e3, ms[1] * 1e3, ms[1] / ms[0]);
}

// Router logits GEMM + fused_moe (as the decoder calls them) against fused_moe_with_router.
void bench_router(const Model& m, const Experts& ex, int64_t tokens, cudaStream_t stream) {
  constexpr int kInputs = 16;
  const Tensor router = bench::random_bf16({m.experts, m.hidden}, 7, 1.f / std::sqrt(float(m.hidden)), stream);
  std::vector<Tensor> xs;
  for (int i = 0; i < kInputs; ++i) xs.push_back(bench::random_bf16({tokens, m.hidden}, 100 + uint64_t(i), 1.f, stream));
  Tensor logits = Tensor::empty({tokens, m.experts}, DType::f32, Device::cuda);
  Tensor out = Tensor::empty({tokens, m.hidden}, DType::bf16, Device::cuda);
  const MoeRouting routing{m.top_k, true};
  const int64_t pairs = tokens * m.top_k;
  Tensor ids = Tensor::empty({pairs}, DType::i32, Device::cuda), weights = Tensor::empty({pairs}, DType::f32, Device::cuda);
  const MoePermuteBuffers perm = moe_permute_buffers(pairs, m.experts);
  MoeWorkspace ws;
  const auto x = [&](int i) -> const Tensor& { return xs[size_t(i % kInputs)]; };
  const double gemm_moe = bench::graph_ms_per_call(stream, kInputs, [&](int i) {
    cublaslt_gemm_bf16(x(i), router, nullptr, logits, stream);
    fused_moe(x(i), logits, ex.mx, routing, out, ws, stream);
  });
  const double fused_moe_ms = bench::graph_ms_per_call(
      stream, kInputs, [&](int i) { fused_moe_with_router(x(i), router, logits, ex.mx, routing, out, ws, stream); });
  const double gemm_route = bench::graph_ms_per_call(stream, kInputs, [&](int i) {
    cublaslt_gemm_bf16(x(i), router, nullptr, logits, stream);
    moe_route_permute(logits, m.top_k, true, ids, weights, perm, stream);
  });
  const double fused_route = bench::graph_ms_per_call(stream, kInputs, [&](int i) {
    moe_router_route_permute(x(i), router, logits, m.top_k, true, ids, weights, perm, stream);
  });
  std::printf("| router %-14s T=%-4lld | %8.1f us | %8.1f us | %5.2fx | %8.1f us | %8.1f us | %5.2fx |\n", m.name,
              (long long)tokens, gemm_moe * 1e3, fused_moe_ms * 1e3, gemm_moe / fused_moe_ms, gemm_route * 1e3,
              fused_route * 1e3, gemm_route / fused_route);
}

void bench_prefill(const Model& m, const Experts& ex, int64_t tokens, cudaStream_t stream) {
  std::mt19937_64 rng(17);
  const Routed r = random_routing(m, tokens, rng);
  const Tensor x = bench::random_bf16({tokens, m.hidden}, 4, 1.f, stream);
  Tensor out = Tensor::empty({tokens, m.hidden}, DType::bf16, Device::cuda);
  const double flops = 6.0 * double(tokens) * m.top_k * double(m.hidden) * double(m.inter);
  const int64_t rows = tokens * m.top_k;
  // cuBLASLt bf16 reference: the two dense GEMMs of the same shapes.
  const Tensor xs = bench::random_bf16({rows, m.hidden}, 5, 1.f, stream), act = bench::random_bf16({rows, m.inter}, 6, 1.f, stream);
  Tensor h = Tensor::empty({rows, 2 * m.inter}, DType::bf16, Device::cuda);
  Tensor y = Tensor::empty({rows, m.hidden}, DType::bf16, Device::cuda);
  const Tensor h_act = Tensor::wrap(h.data(), {rows, m.inter}, DType::bf16, Device::cuda);
  const Tensor w13 = ex.bf16.w13.select(0);  // expert 0 as a dense [2I, H]
  const Tensor w2 = ex.bf16.w2.select(0);    // [H, I]
  const double lt_ms = bench::median_ms(stream, [&](int) {
    cublaslt_gemm_bf16(xs, w13, nullptr, h, stream);
    cublaslt_gemm_bf16(act, w2, nullptr, y, stream);
  }, 5, 30);
  const double lt_tflops = flops / (lt_ms * 1e-3) / 1e12;
  // The routing precomputed, for timing the two grouped GEMMs alone.
  MoePermuteBuffers perm = moe_permute_buffers(rows, m.experts);
  Tensor ids = Tensor::empty({rows}, DType::i32, Device::cuda), weights = Tensor::empty({rows}, DType::f32, Device::cuda);
  moe_route_permute(r.logits, m.top_k, true, ids, weights, perm, stream);
  const Tensor& offsets = perm.perm.expert_offsets;
  const MoeRouting routing{m.top_k, true};
  for (int mx = 1; mx >= 0; --mx) {
    MoeWorkspace ws;
    const double ms = bench::median_ms(
        stream, [&](int) { fused_moe(x, r.logits, mx ? ex.mx : ex.bf16, routing, out, ws, stream); }, 5, 30);
    const double gemms_ms = bench::median_ms(stream, [&](int) {
      if (mx) {  // as fused_moe runs them: SiLU·up in the gate/up GEMM (h's first half holds act)
        w8a16_grouped_gemm_silu_mul(xs, ex.mx.w13_mx, offsets, h_act, stream);
        w8a16_grouped_gemm(act, ex.mx.w2_mx, offsets, y, stream);
      } else {
        bf16_grouped_gemm(xs, ex.bf16.w13, offsets, h, stream);
        bf16_grouped_gemm(act, ex.bf16.w2, offsets, y, stream);
      }
    }, 5, 30);
    const double tf = flops / (ms * 1e-3) / 1e12;
    std::printf("| prefill %-13s T=%-4lld | %-5s | %8.1f us | %6.1f TFLOP/s | %8.1f us | cuBLASLt bf16 dense %6.1f "
                "TFLOP/s | %4.2fx |\n",
                m.name, (long long)tokens, mx ? "mxfp8" : "bf16", ms * 1e3, tf, gemms_ms * 1e3, lt_tflops,
                tf / lt_tflops);
  }
}

}  // namespace

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // rows reach a pipe as they finish, even if a later case aborts
  Stream stream;
  const double copy_gbs = bench::copy_bandwidth_gbs(stream);
  std::printf("device copy bandwidth (read+write): %.0f GB/s\n\n", copy_gbs);
  const Model models[] = {{"Qwen3-30B-A3B", 128, 2048, 768, 8}, {"Mixtral-8x7B", 8, 4096, 14336, 2}};
  std::printf("| case | weights | experts read/call | eager | graph | expert kernels only (graph) | GB/s (graph) | of copy "
              "| routing+permute alone (graph) | moe_combine alone (graph) |\n|---|---|---|---|---|---|---|---|---|---|\n");
  std::vector<Experts> experts;
  for (const Model& m : models) {
    experts.push_back(make_experts(m, stream));
    for (int64_t t : {1, 8}) bench_decode(m, experts.back(), t, copy_gbs, stream);
  }
  std::printf("\n| case (MXFP8) | cuBLASLt router + fused_moe (graph) | fused_moe_with_router (graph) | speedup "
              "| cuBLASLt router + routing+permute | fused router+routing+permute | speedup |\n"
              "|---|---|---|---|---|---|---|\n");
  for (size_t i = 0; i < 2; ++i)
    for (int64_t t : {1, 8}) bench_router(models[i], experts[i], t, stream);
  std::printf("\n| shape (MXFP8) | T | pairs/expert | decode path | prefill path | decode speedup |\n"
              "|---|---|---|---|---|---|\n");
  for (size_t i = 0; i < 2; ++i)
    for (int64_t t : {16, 32, 64, 128, 256, 512}) bench_crossover(models[i], experts[i], t, stream);
  std::printf("\n| case | weights | time | MoE | grouped GEMMs only | reference | ratio |\n|---|---|---|---|---|---|---|\n");
  for (size_t i = 0; i < 2; ++i) bench_prefill(models[i], experts[i], 4096, stream);
  return 0;
}
