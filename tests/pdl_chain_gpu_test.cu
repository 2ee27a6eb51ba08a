// The small kernels of the decode step in one programmatic-dependent-launch chain (kernels/pdl.cuh),
// captured in a CUDA graph and replayed: embedding -> add_rmsnorm -> qk_norm_rope_kv_write ->
// add_rmsnorm -> silu_mul -> moe_combine -> add_sigmoid_gated -> embedding (the decoder's gather of
// the rows whose logits are wanted, whose table is an activation). Each kernel may start while its
// predecessor runs; one that read an activation before its wait would see the poison written into
// every intermediate before each replay. Every intermediate must equal, bit for bit, the same chain
// run eagerly without PDL on the same fresh random inputs (each kernel's own GPU test checks it
// against its CPU reference). The graph must hold a programmatic edge between each pair of kernels
// with PDL on, and none with MXMOE_PDL=0 semantics (set_pdl_enabled(false)).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "engine/cuda_check.h"
#include "engine/stream.h"
#include "kernels/activation.h"
#include "kernels/embedding.h"
#include "kernels/gated_add.h"
#include "kernels/moe_permute.h"
#include "kernels/pdl_switch.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "test_util.h"

using namespace mxmoe;
using mxmoe::testing::fresh_seed;
using mxmoe::testing::random_tensor;
using mxmoe::testing::same_bytes;

namespace {

constexpr int64_t kHq = 32, kHkv = 4, kHd = 128, kH = (kHq + 2 * kHkv) * kHd;  // Qwen3-30B-A3B's fused QKV row
constexpr int64_t kVocab = 1000, kBlockSize = 16;
constexpr float kEps = 1e-6f;
constexpr int kKernels = 8;  // launches of run_chain

// Restores the process-wide switch when the test ends, failed or not.
struct PdlRestore {
  bool was = pdl_enabled();
  ~PdlRestore() { set_pdl_enabled(was); }
};

Tensor random_i32(int64_t n, int64_t bound, std::mt19937_64& rng) {
  Tensor t = Tensor::empty({n}, DType::i32, Device::cpu);
  for (int64_t i = 0; i < n; ++i) t.data_as<int32_t>()[i] = int32_t(rng() % uint64_t(bound));
  return t;
}

struct Chain {
  int64_t t, top_k, picks;
  // Inputs (device); rewritten with fresh values by refill().
  Tensor ids, table, res0, w1, w2, qn, kn, pos, inv_freq, slots, weights, rows, gate, pick;
  // Outputs and intermediates (device), poisoned before every run.
  Tensor res, e, n, n2, act, comb, picked, kc, vc;

  Chain(int64_t tokens, int64_t k) : t(tokens), top_k(k), picks(std::max<int64_t>(1, tokens / k / 2)) {
    const Device d = Device::cuda;
    const int64_t blocks = t / kBlockSize + 2;
    ids = Tensor::empty({t}, DType::i32, d);
    table = Tensor::empty({kVocab, kH}, DType::bf16, d);
    res0 = Tensor::empty({t, kH}, DType::bf16, d);
    w1 = Tensor::empty({kH}, DType::bf16, d);
    w2 = Tensor::empty({kH}, DType::bf16, d);
    qn = Tensor::empty({kHd}, DType::bf16, d);
    kn = Tensor::empty({kHd}, DType::bf16, d);
    pos = Tensor::empty({t}, DType::i32, d);
    inv_freq = Tensor::empty({kHd / 2}, DType::f32, d);
    slots = Tensor::empty({t}, DType::i32, d);
    weights = Tensor::empty({t}, DType::f32, d);
    rows = Tensor::empty({t}, DType::i32, d);
    gate = Tensor::empty({t / k, 1}, DType::f32, d);
    pick = Tensor::empty({picks}, DType::i32, d);
    res = Tensor::empty({t, kH}, DType::bf16, d);
    e = Tensor::empty({t, kH}, DType::bf16, d);
    n = Tensor::empty({t, kH}, DType::bf16, d);
    n2 = Tensor::empty({t, kH}, DType::bf16, d);
    act = Tensor::empty({t, kH / 2}, DType::bf16, d);
    comb = Tensor::empty({t / k, kH / 2}, DType::bf16, d);
    picked = Tensor::empty({picks, kH / 2}, DType::bf16, d);
    kc = Tensor::empty({blocks, kHkv, kBlockSize, kHd}, DType::bf16, d);
    vc = Tensor::empty(kc.shape(), DType::bf16, d);
  }

  // The KV caches last: every slot but the tokens' keeps its poison.
  std::vector<Tensor*> outputs() { return {&res, &e, &n, &n2, &act, &comb, &picked, &kc, &vc}; }
  static constexpr size_t kFullyWritten = 7;
  static const char* name(size_t i) {
    static const char* names[] = {"residual", "embedding", "qkv after rope", "second norm", "silu_mul",
                                  "combine + gated add", "picked rows", "k cache", "v cache"};
    return names[i];
  }

  void refill(std::mt19937_64& rng, cudaStream_t stream) {
    const auto up = [&](Tensor& dst, const Tensor& src) { dst.copy_from(src, stream); };
    up(ids, random_i32(t, kVocab, rng));
    up(table, random_tensor(table.shape(), DType::bf16, rng));
    up(res0, random_tensor(res0.shape(), DType::bf16, rng, 4.f));
    for (Tensor* w : {&w1, &w2, &qn, &kn}) up(*w, random_tensor(w->shape(), DType::bf16, rng, 0.3f, 1.f));
    up(pos, random_i32(t, 40000, rng));
    RopeConfig rc;
    rc.theta = 1e6;
    rc.head_dim = int(kHd);
    const RopeFrequencies f = rope_frequencies(rc);
    up(inv_freq, Tensor::wrap(const_cast<float*>(f.inv_freq.data()), {kHd / 2}, DType::f32, Device::cpu));
    std::vector<int32_t> order(size_t(kc.size(0) * kBlockSize));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    Tensor s = Tensor::empty({t}, DType::i32, Device::cpu);
    for (int64_t i = 0; i < t; ++i) s.data_as<int32_t>()[i] = i == 1 ? -1 : order[size_t(i)];  // token 1: not stored
    up(slots, s);
    Tensor w = random_tensor({t}, DType::f32, rng, 0.2f, 0.5f);
    up(weights, w);
    Tensor r = Tensor::empty({t}, DType::i32, Device::cpu);
    std::iota(r.data_as<int32_t>(), r.data_as<int32_t>() + t, 0);
    std::shuffle(r.data_as<int32_t>(), r.data_as<int32_t>() + t, rng);
    up(rows, r);
    up(gate, random_tensor(gate.shape(), DType::f32, rng, 2.f));
    up(pick, random_i32(picks, t / top_k, rng));
    CUDA_CHECK(cudaStreamSynchronize(stream));  // the host sources die here
  }

  void poison(cudaStream_t stream) {
    for (Tensor* o : outputs()) CUDA_CHECK(cudaMemsetAsync(o->data(), 0xFF, o->nbytes(), stream));  // bf16 NaN
  }

  // The chain as the decode step runs it (kKernels launches after one copy).
  void run(cudaStream_t stream) {
    res.copy_from(res0, stream);
    embedding(ids, table, 0, e, stream);
    add_rmsnorm(res, e, w1, kEps, n, stream);  // res += e; n = norm(res)
    const Tensor heads = n.view({t, kHq + 2 * kHkv, kHd});  // [T, q | k | v heads, hd]
    qk_norm_rope_kv_write(heads.narrow(1, 0, kHq), heads.narrow(1, kHq, kHkv), heads.narrow(1, kHq + kHkv, kHkv), &qn,
                          &kn, kEps, pos, inv_freq, 1.f, slots, kc, vc, stream);
    add_rmsnorm(res, n, w2, kEps, n2, stream);  // res += n; n2 = norm(res)
    silu_mul(n2, act, stream);                 // [T, H] as gate | up -> [T, H/2]
    moe_combine(act, weights, &rows, int(top_k), comb, stream);     // T pairs -> T/k rows
    add_sigmoid_gated(comb, act.slice(0, t / top_k), gate, stream);  // comb += sigmoid(gate) · act rows
    embedding(pick, comb, 0, picked, stream);
  }

  std::vector<Tensor> host_outputs(cudaStream_t stream) {
    CUDA_CHECK(cudaStreamSynchronize(stream));  // a non-blocking stream: to() would not wait for it
    std::vector<Tensor> out;
    for (Tensor* o : outputs()) out.push_back(o->to(Device::cpu));
    return out;
  }
};

int programmatic_edges(cudaGraph_t graph) {
#if CUDART_VERSION >= 13000
  const auto get_edges = cudaGraphGetEdges;
#else
  const auto get_edges = cudaGraphGetEdges_v2;  // 12.3+: the edge types
#endif
  size_t count = 0;
  CUDA_CHECK(get_edges(graph, nullptr, nullptr, nullptr, &count));
  std::vector<cudaGraphNode_t> from(count), to(count);
  std::vector<cudaGraphEdgeData> data(count);
  CUDA_CHECK(get_edges(graph, from.data(), to.data(), data.data(), &count));
  return int(std::count_if(data.begin(), data.end(),
                           [](const cudaGraphEdgeData& d) { return d.type == cudaGraphDependencyTypeProgrammatic; }));
}

// Captures chain.run with PDL on or off; checks its programmatic edges.
cudaGraphExec_t capture(Chain& chain, bool pdl, cudaStream_t stream) {
  set_pdl_enabled(pdl);
  cudaGraph_t graph = nullptr;
  CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  chain.run(stream);
  CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  EXPECT_EQ(programmatic_edges(graph), pdl ? kKernels - 1 : 0) << "PDL " << (pdl ? "on" : "off");
  cudaGraphExec_t exec = nullptr;
  CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  CUDA_CHECK(cudaGraphDestroy(graph));
  return exec;
}

void expect_same(const std::vector<Tensor>& got, const std::vector<Tensor>& ref, const std::string& what) {
  for (size_t i = 0; i < ref.size(); ++i) EXPECT_TRUE(same_bytes(got[i], ref[i])) << Chain::name(i) << ", " << what;
}

}  // namespace

TEST(PdlChainGpu, GraphReplaysMatchEagerRunWithoutPdl) {
  MXMOE_REQUIRE_GPU();
  const PdlRestore restore;
  std::mt19937_64 rng(fresh_seed());
  Stream stream;
  for (const auto& [t, k] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {4, 2}, {16, 8}}) {
    Chain chain(t, k);
    chain.refill(rng, stream);
    chain.poison(stream);
    chain.run(stream);  // before capture: every launch checked once outside a graph
    CUDA_CHECK(cudaStreamSynchronize(stream));
    cudaGraphExec_t on = capture(chain, true, stream), off = capture(chain, false, stream);
    for (int replay = 0; replay < 4; ++replay) {
      const std::string what = "T = " + std::to_string(t) + ", top_k = " + std::to_string(k) + ", replay " +
                               std::to_string(replay);
      chain.refill(rng, stream);
      set_pdl_enabled(false);
      chain.poison(stream);
      chain.run(stream);
      const std::vector<Tensor> ref = chain.host_outputs(stream);
      for (size_t i = 0; i < Chain::kFullyWritten; ++i) {  // the reference itself: nothing left of the poison
        const std::vector<float> v = to_f32_vector(ref[i]);
        EXPECT_TRUE(std::all_of(v.begin(), v.end(), [](float x) { return std::isfinite(x); }))
            << Chain::name(i) << ", " << what;
      }
      set_pdl_enabled(true);
      chain.poison(stream);
      chain.run(stream);
      expect_same(chain.host_outputs(stream), ref, "eager with PDL, " + what);
      for (cudaGraphExec_t g : {on, off}) {
        chain.poison(stream);
        CUDA_CHECK(cudaGraphLaunch(g, stream));
        expect_same(chain.host_outputs(stream), ref, (g == on ? "graph with PDL, " : "graph without PDL, ") + what);
      }
    }
    CUDA_CHECK(cudaGraphExecDestroy(on));
    CUDA_CHECK(cudaGraphExecDestroy(off));
  }
}
