#!/usr/bin/env python3
"""The fused-MoE benchmark shapes of apps/bench-moe.cu in PyTorch (bf16, torch._grouped_mm), for the
comparison table. Same definitions: the whole MoE forward (softmax router, top-k, renormalize,
sort by expert, two grouped GEMMs with SiLU*up between, weighted combine); decode GB/s on the
bytes of the experts actually used (bf16), 16 routing patterns cycled, timed as a CUDA graph of
the 16 calls (eager too); prefill TFLOP/s = 6*T*k*H*I / time, with torch.mm bf16 running the two
dense GEMMs of the same shapes as the reference. Run on the GPU machine after .ci/device-run.
"""
import torch
import torch.nn.functional as F

MODELS = [("Qwen3-30B-A3B", 128, 2048, 768, 8), ("Mixtral-8x7B", 8, 4096, 14336, 2)]
PATTERNS = 16


def median_ms(fn, warmup=5, repeats=30):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return sorted(times)[len(times) // 2]


def moe(x, logits, w13t, w2t, k, inter):
    """x [T, H] bf16, logits [T, E] f32, w13t [E, H, 2I], w2t [E, I, H] (transposed views) -> [T, H] bf16."""
    experts = logits.shape[1]
    probs = torch.softmax(logits, -1, dtype=torch.float32)
    weights, ids = torch.topk(probs, k)
    weights = weights / weights.sum(-1, keepdim=True)
    flat = ids.flatten()
    order = torch.argsort(flat, stable=True)
    counts = torch.zeros(experts, dtype=torch.int32, device=x.device).scatter_add_(
        0, flat, torch.ones_like(flat, dtype=torch.int32))
    offs = torch.cumsum(counts, 0, dtype=torch.int32)
    token = order // k
    h = torch._grouped_mm(x[token], w13t, offs=offs)
    act = F.silu(h[:, :inter]) * h[:, inter:]
    y = torch._grouped_mm(act, w2t, offs=offs)
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    out.index_add_(0, token, y.float() * weights.flatten()[order, None])
    return out.to(torch.bfloat16)


def copy_gbs():
    a = torch.ones(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    return 2 * a.numel() / (median_ms(lambda: b.copy_(a), 3, 20) * 1e-3) / 1e9


def main():
    torch.manual_seed(0)
    dev = "cuda"
    bw = copy_gbs()
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, copy bandwidth (read+write) {bw:.0f} GB/s\n")
    print("| case | weights | experts read/call | eager | graph | GB/s (graph) | of copy |\n|---|---|---|---|---|---|---|")
    weights = {}
    for name, e, hid, inter, k in MODELS:
        w13 = (torch.rand(e, 2 * inter, hid, device=dev, dtype=torch.bfloat16) * 2 - 1) / hid ** 0.5
        w2 = (torch.rand(e, hid, inter, device=dev, dtype=torch.bfloat16) * 2 - 1) / inter ** 0.5
        w13t, w2t = w13.transpose(1, 2), w2.transpose(1, 2)  # [E, H, 2I], [E, I, H], K-major as _grouped_mm wants
        weights[name] = (w13t, w2t)
        expert_bytes = 3 * hid * inter * 2
        for t in (1, 8):
            logits = [torch.randn(t, e, device=dev) for _ in range(PATTERNS)]
            distinct = sum(torch.topk(l, k).indices.unique().numel() for l in logits) / PATTERNS
            x = torch.rand(t, hid, device=dev, dtype=torch.bfloat16) * 2 - 1
            calls = [0]

            def call():
                calls[0] += 1
                return moe(x, logits[calls[0] % PATTERNS], w13t, w2t, k, inter)
            eager = median_ms(call)
            try:
                graph = torch.cuda.CUDAGraph()
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    for i in range(PATTERNS):
                        moe(x, logits[i], w13t, w2t, k, inter)
                torch.cuda.current_stream().wait_stream(s)
                with torch.cuda.graph(graph):
                    for i in range(PATTERNS):
                        moe(x, logits[i], w13t, w2t, k, inter)
                per_call = median_ms(graph.replay, 3, 20) / PATTERNS
                graph_txt = f"{per_call * 1e3:8.1f} us"
            except Exception as err:  # report, fall back to eager
                per_call, graph_txt = eager, f"n/a ({type(err).__name__})"
            gbs = distinct * expert_bytes / (per_call * 1e-3) / 1e9
            print(f"| torch decode {name} T={t} | bf16 | {distinct:.1f} experts, {distinct * expert_bytes / 1e6:.1f} MB "
                  f"| {eager * 1e3:8.1f} us | {graph_txt} | {gbs:6.0f} GB/s | {100 * gbs / bw:5.1f}% |")

    print("\n| case | weights | time | MoE | reference | ratio |\n|---|---|---|---|---|---|")
    for name, e, hid, inter, k in MODELS:
        t = 4096
        w13t, w2t = weights[name]
        logits = torch.randn(t, e, device=dev)
        x = torch.rand(t, hid, device=dev, dtype=torch.bfloat16) * 2 - 1
        flops = 6 * t * k * hid * inter
        ms = median_ms(lambda: moe(x, logits, w13t, w2t, k, inter))
        xs = torch.rand(t * k, hid, device=dev, dtype=torch.bfloat16)
        act = torch.rand(t * k, inter, device=dev, dtype=torch.bfloat16)
        ref_ms = median_ms(lambda: (xs @ w13t[0], act @ w2t[0]))
        tf, ref_tf = flops / (ms * 1e-3) / 1e12, flops / (ref_ms * 1e-3) / 1e12
        print(f"| torch prefill {name} T={t} | bf16 | {ms * 1e3:8.1f} us | {tf:6.1f} TFLOP/s "
              f"| torch.mm bf16 dense {ref_tf:6.1f} TFLOP/s | {tf / ref_tf:4.2f}x |")


if __name__ == "__main__":
    main()
