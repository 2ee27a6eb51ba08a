#!/usr/bin/env python3
"""The reference for apps/bench: Hugging Face transformers on the same config in bf16, random
weights, the same batch / prompt length / new tokens, greedy, KV cache on.

  python3 apps/bench_hf.py --config qwen3-30b-a3b [--layers 8] [--batch 1] [--input-len 512]
                           [--output-len 64] [--json FILE]

--layers N builds the model with N decoder layers instead of the config's (the full models do not
fit in bf16 beside nothing else, and transformers' decode step is dominated by per-layer time):
the reported full-model figures scale the measured per-step time by num_hidden_layers / N
(embedding and LM head are counted as if per layer too: a slight overestimate of its time, so
its tok/s is slightly underestimated). TTFT is one generate() with one new token; decode time is
(generate(output_len) - TTFT) / (output_len - 1), medians of 3 runs after a warm-up.
"""
import argparse
import json
import os
import statistics
import time

import torch
import transformers

CONFIGS = {
    "qwen3-30b-a3b": "qwen3-30b-a3b.json",
    "mixtral-8x7b": "mixtral-8x7b-v0.1.json",
    "olmoe-1b-7b": "olmoe-1b-7b-0924.json",
}


def timed(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="a name in loader/configs or a path to a config.json")
    ap.add_argument("--layers", type=int, default=0, help="decoder layers to build (0: the config's)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    path = args.config
    if args.config in CONFIGS:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "loader", "configs", CONFIGS[args.config])
    with open(path) as f:
        raw = json.load(f)
    full_layers = raw["num_hidden_layers"]
    config = transformers.AutoConfig.for_model(**raw)
    if args.layers:
        config.num_hidden_layers = args.layers
        if hasattr(config, "layer_types") and config.layer_types:
            config.layer_types = config.layer_types[: args.layers]
    layers = config.num_hidden_layers

    torch.manual_seed(0)
    load_start = time.perf_counter()
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.eval()
    load_s = time.perf_counter() - load_start

    ids = torch.randint(0, config.vocab_size, (args.batch, args.input_len), device="cuda")
    mask = torch.ones_like(ids)

    def generate(n):
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           use_cache=True, pad_token_id=0)

    generate(4)  # warm-up
    ttft = statistics.median(timed(lambda: generate(1)) for _ in range(3))
    total = statistics.median(timed(lambda: generate(args.output_len)) for _ in range(3))
    step = (total - ttft) / (args.output_len - 1)
    scale = full_layers / layers
    out = {
        "framework": f"transformers {transformers.__version__}, torch {torch.__version__}",
        "model": config.model_type,
        "layers_built": layers,
        "layers_full": full_layers,
        "batch": args.batch,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "init_seconds": load_s,
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30,
        "ttft_ms_measured": ttft * 1e3,
        "decode_ms_per_step_measured": step * 1e3,
        "decode_tok_s_measured": args.batch / step,
        "ttft_ms_full_model": ttft * 1e3 * scale,
        "decode_ms_per_step_full_model": step * 1e3 * scale,
        "decode_tok_s_full_model": args.batch / (step * scale),
    }
    print(f"transformers {config.model_type} bf16, {layers}/{full_layers} layers, batch {args.batch}, "
          f"{args.input_len}+{args.output_len}: TTFT {ttft * 1e3:.1f} ms, decode {step * 1e3:.2f} ms/step "
          f"({args.batch / step:.1f} tok/s); scaled to {full_layers} layers: {args.batch / (step * scale):.1f} tok/s, "
          f"TTFT {ttft * 1e3 * scale:.0f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
