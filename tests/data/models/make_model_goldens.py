#!/usr/bin/env python3
"""Tiny random checkpoints + golden outputs from Hugging Face transformers (the independent
implementation the engine is tested against).

For each architecture: a tiny random model is built from a config, its weights rounded to bf16
and saved as a Hugging Face checkpoint (config.json, generation_config.json, model.safetensors)
in the hub's own tensor naming: transformers 5 fuses MoE experts in memory
(experts.gate_up_proj [E, 2I, H], experts.down_proj [E, H, I]), while published checkpoints keep
one tensor per expert, so experts are split back to the per-expert names here and the written
checkpoint is reloaded with from_pretrained to prove transformers reads it as the same model.
Goldens (goldens.json), computed in float32 from the bf16 weights with eager attention:
  - logits [T, V] of every position for fixed prompts
  - the greedy continuation of each prompt (and the top-1 margin at each step)
  - "mxfp8": logits with every linear weight except embeddings, router gates and lm_head replaced
    by its MXFP8 (RCEIL) quantize->dequantize round trip, and KL(bf16 || mxfp8) / top-1 agreement.

    python3 tests/data/models/make_model_goldens.py OUT_DIR     (needs torch + transformers 5)
"""
import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file

from hub_format import hub_state_dict

# head_dim 64 as in real checkpoints (the attention kernels take 64, 128 and 256), 4 query heads
# sharing 2 KV heads (GQA). Sized so every model runs tensor parallel at tp = 2 and 4, in bf16 and
# MXFP8: heads and vocab divisible by 4, tp = 4 > 2 KV heads (KV replication at 4), and every width
# a row-parallel layer splits (o_proj input 4·64, dense/expert/shared intermediate 128) still a
# multiple of the 32-element MXFP8 block per rank at tp = 4. Hidden size 128 with head_dim given
# explicitly (q is 4·64 = 256 wide, as real Qwen3 checkpoints have q wider than hidden); an
# architecture whose transformers class ignores head_dim gets hidden 256 instead (checked on the
# built model; with transformers 5.17 only OLMoE, whose q_norm spans hidden_size). 4 experts keep
# the checkpoints small (the whole set is ~9 MB; the device tool copies the tree, 64 MiB at most).
V, LAYERS, HEADS, KV_HEADS, HEAD_DIM, INTER, EXPERTS = 256, 2, 4, 2, 64, 128, 4
COMMON = dict(vocab_size=V, num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
              max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1,
              eos_token_id=2, pad_token_id=0)
MOE = dict(num_experts_per_tok=2)

ARCHS = {
    "qwen3_moe": lambda **c: transformers.Qwen3MoeConfig(
        **c, intermediate_size=INTER, moe_intermediate_size=INTER, num_experts=EXPERTS, **MOE,
        norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[1]),
    "mixtral": lambda **c: transformers.MixtralConfig(
        **c, intermediate_size=INTER, num_local_experts=EXPERTS, **MOE, rope_theta=1e6),
    "olmoe": lambda **c: transformers.OlmoeConfig(
        **c, intermediate_size=INTER, num_experts=EXPERTS, **MOE, norm_topk_prob=False),
    "qwen2_moe": lambda **c: transformers.Qwen2MoeConfig(
        **c, intermediate_size=INTER, moe_intermediate_size=INTER, shared_expert_intermediate_size=INTER,
        num_experts=EXPERTS, **MOE, norm_topk_prob=False, decoder_sparse_step=1),
    "llama": lambda **c: transformers.LlamaConfig(
        **c, intermediate_size=INTER,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "qwen2": lambda **c: transformers.Qwen2Config(**{**c, "tie_word_embeddings": True}, intermediate_size=INTER),
    "qwen3": lambda **c: transformers.Qwen3Config(
        **c, intermediate_size=INTER,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}),
}


def build(arch):
    """The config and random model of `arch` at hidden 128 with head_dim 64 if transformers builds
    the attention that way, else at hidden 256 (head_dim 64 = 256 / 4 heads either way)."""
    for hidden, explicit_head_dim in ((128, True), (256, True), (256, False)):
        # initializer_range 0.25 at hidden 128, scaled by 1/sqrt(hidden) beyond: activations and
        # logits (rms ~3) at the scale the golden tolerances were measured at.
        c = dict(COMMON, hidden_size=hidden, initializer_range=0.25 * (128 / hidden) ** 0.5)
        if explicit_head_dim:
            c["head_dim"] = HEAD_DIM
        try:
            config = ARCHS[arch](**c)
            model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
        except Exception as e:  # a config class that refuses head_dim: the next size
            print(f"{arch}: hidden {hidden} head_dim {explicit_head_dim}: {e}")
            continue
        attn = model.model.layers[0].self_attn
        widths = [attn.q_proj.out_features, getattr(attn, "head_dim", HEAD_DIM) * HEADS]
        if getattr(attn, "q_norm", None) is not None and arch == "olmoe":
            widths.append(attn.q_norm.weight.numel())
        if all(w == HEADS * HEAD_DIM for w in widths):
            return config, model
        print(f"{arch}: hidden {hidden}: attention widths {widths}, want {HEADS * HEAD_DIM}; next size")
    raise RuntimeError(f"{arch}: no hidden size gives {HEADS} heads of {HEAD_DIM}")
PROMPTS = [[1, 17, 42, 99, 3, 250, 7], [1, 5, 5, 5, 200, 13, 64, 128, 31, 77, 9, 180]]
NEW_TOKENS = 8


def mxfp8_roundtrip(w):
    """RCEIL MXFP8 along the last dim: scale = smallest power of two >= amax/448; e4m3 RNE, saturating."""
    blocks = w.float().reshape(*w.shape[:-1], w.shape[-1] // 32, 32)
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    mant, exp = torch.frexp(amax / 448.0)  # amax/448 = mant·2^exp, mant in [0.5, 1)
    exp = torch.where(mant == 0.5, exp - 1, exp).clamp(-127, 127)
    scale = torch.where(amax == 0, torch.full_like(amax, 2.0 ** -127), torch.pow(2.0, exp.float()))
    q = (blocks / scale).clamp(-448, 448).to(torch.float8_e4m3fn).float()
    return (q * scale).reshape(w.shape)


def quantized_copy(model):
    m = type(model)(model.config).float()
    m.load_state_dict(model.state_dict())
    for name, p in m.named_parameters():
        keep_bf16 = "embed_tokens" in name or "lm_head" in name or name.endswith("mlp.gate.weight") \
            or "norm" in name or p.dim() < 2 or name.endswith("shared_expert_gate.weight")
        if not keep_bf16:
            with torch.no_grad():
                p.copy_(mxfp8_roundtrip(p))
    return m


def logits_of(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def main(out_root):
    torch.manual_seed(20261123)
    for arch in ARCHS:
        out = os.path.join(out_root, arch)
        os.makedirs(out, exist_ok=True)
        config, model = build(arch)
        model = model.to(torch.bfloat16).float().eval()
        config.dtype = "bfloat16"
        config.save_pretrained(out)
        transformers.GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0).save_pretrained(out)
        save_file(hub_state_dict(model, arch), os.path.join(out, "model.safetensors"), metadata={"format": "pt"})

        reloaded, info = transformers.AutoModelForCausalLM.from_pretrained(
            out, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
        reloaded.eval()
        bad = {k: v for k, v in info.items() if v and k != "error_msgs" or (k == "error_msgs" and v)}
        assert not any(bad.values()), f"{arch}: checkpoint not read cleanly: {bad}"
        for name, p in model.named_parameters():  # the written checkpoint is exactly this model
            assert torch.equal(p, reloaded.get_parameter(name)), f"{arch}: {name} differs after reload"
        quant = quantized_copy(reloaded).eval()
        goldens = {"arch": arch, "transformers": transformers.__version__, "prompts": []}
        for ids in PROMPTS:
            ref = logits_of(reloaded, ids)
            seq, margins = list(ids), []
            for _ in range(NEW_TOKENS):
                last = logits_of(reloaded, seq)[-1]
                top2 = torch.topk(last, 2).values
                margins.append(float(top2[0] - top2[1]))
                seq.append(int(last.argmax()))
            q = logits_of(quant, ids)
            kl = torch.nn.functional.kl_div(q.log_softmax(-1), ref.log_softmax(-1), log_target=True,
                                            reduction="none").sum(-1)
            goldens["prompts"].append({
                "ids": ids, "logits": [[round(v, 5) for v in row] for row in ref.tolist()],
                "greedy": seq[len(ids):], "greedy_margins": margins,
                "mxfp8_logits": [[round(v, 5) for v in row] for row in q.tolist()],
                "mxfp8_kl_mean": float(kl.mean()),
                "mxfp8_top1_agreement": float((q.argmax(-1) == ref.argmax(-1)).float().mean()),
            })
        with open(os.path.join(out, "goldens.json"), "w") as f:
            json.dump(goldens, f)
        p = goldens["prompts"]
        print(f"{arch}: hidden {config.hidden_size}, greedy {[x['greedy'] for x in p]} min margin "
              f"{min(min(x['greedy_margins']) for x in p):.4f} mxfp8 KL {p[0]['mxfp8_kl_mean']:.2e} "
              f"top1 {p[0]['mxfp8_top1_agreement']:.2f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__)))
