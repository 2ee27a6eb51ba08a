#!/usr/bin/env python3
"""Trains the bundled demo model: a small Qwen3-MoE on the King James Bible (public domain).

Data: Debian's bible-kjv package (`apt-get install bible-kjv`), dumped with
    bible -l1000000 gen1:1-rev22:21 > kjv.txt
Verse numbers are dropped; chapters become paragraphs. Genesis..Jude train the model, except
every 40th chapter, which is the validation set that picks the checkpoint (the corpus is only
~1M tokens, so a 6.6M-parameter model overfits after a few epochs). The book of Revelation is
held out entirely (heldout.txt, the perplexity test's text) and never seen in training.

Tokenizer: byte-level BPE (the `tokenizers` package), 4096 tokens, trained on the training text.
Model: Qwen3-MoE, 4 layers, hidden 256, 4 query / 2 KV heads of 64, 8 experts of width 192,
top-2 with renormalized weights, tied embeddings: 6.6M parameters, ~13 MB in bf16.
Written in the published per-expert tensor naming (tests/data/models/hub_format.py).

    python3 models/demo/train.py kjv.txt OUT_DIR [steps]     (GPU, torch + transformers 5)
"""
import json
import math
import os
import re
import sys
import time

import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../tests/data/models"))
from hub_format import hub_state_dict  # noqa: E402

EOS = "<|endoftext|>"
SEQ, BATCH = 256, 64


def paragraphs(raw):
    """Chapters as paragraphs of plain verses: (book chapter heading, text)."""
    chapters, current, title = [], [], None
    for line in raw.splitlines():
        line = line.strip()
        if not line:
            continue
        m = re.match(r"^\d+\s+(.*)$", line)
        if m:
            current.append(m.group(1))
        else:
            if current:
                chapters.append((title, " ".join(current)))
            title, current = line, []
    if current:
        chapters.append((title, " ".join(current)))
    return chapters


def main(src, out, steps):
    torch.manual_seed(0)
    chapters = paragraphs(open(src, encoding="utf-8").read())
    books = [t for title, t in chapters if not title.startswith("Revelation")]
    train = [t for i, t in enumerate(books) if i % 40 != 39]
    val = [t for i, t in enumerate(books) if i % 40 == 39]
    held = [t for title, t in chapters if title.startswith("Revelation")]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "heldout.txt"), "w") as f:
        f.write("\n\n".join(held) + "\n")

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(train, trainers.BpeTrainer(vocab_size=4096, special_tokens=[EOS],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS)
    fast.save_pretrained(out)
    eos = tok.token_to_id(EOS)
    ids = []
    for t in train:
        ids.extend(tok.encode(t).ids + [eos])
    data = torch.tensor(ids, dtype=torch.long, device="cuda")
    val_ids = torch.tensor([i for t in val for i in tok.encode(t).ids + [eos]], device="cuda")
    val_batch = val_ids[: (len(val_ids) // SEQ) * SEQ].view(-1, SEQ)
    print(f"train tokens {len(ids)}, validation tokens {val_batch.numel()}, held-out chapters {len(held)}", flush=True)

    config = transformers.Qwen3MoeConfig(
        vocab_size=4096, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        head_dim=64, intermediate_size=512, moe_intermediate_size=192, num_experts=8, num_experts_per_tok=2,
        norm_topk_prob=True, max_position_embeddings=1024, rope_theta=10000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True, bos_token_id=eos, eos_token_id=eos, router_aux_loss_coef=0.01,
        output_router_logits=True)
    model = transformers.AutoModelForCausalLM.from_config(config).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    best, best_val, start = None, float("inf"), time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = 3e-3 * min(1.0, step / 100) * 0.5 * (1 + math.cos(math.pi * step / steps))
        starts = torch.randint(0, len(ids) - SEQ, (BATCH,), device="cuda")
        batch = torch.stack([data[s:s + SEQ] for s in starts.tolist()])
        model.train()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=batch, labels=batch).loss  # next-token loss + router balance loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % 50 == 0:
            model.eval()
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(input_ids=val_batch).logits.float()
                val_loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                             val_batch[:, 1:].reshape(-1)).item()
            if val_loss < best_val:
                best_val, best = val_loss, {k: v.detach().clone() for k, v in model.state_dict().items()}
            print(f"step {step + 1} train {loss.item():.3f} validation {val_loss:.3f} ({time.time() - start:.0f} s)",
                  flush=True)
    model.load_state_dict(best)
    model = model.to(torch.bfloat16).eval()
    config.output_router_logits = False
    config.dtype = "bfloat16"
    config.save_pretrained(out)
    transformers.GenerationConfig(bos_token_id=eos, eos_token_id=eos).save_pretrained(out)
    save_file(hub_state_dict(model, "qwen3_moe"), os.path.join(out, "model.safetensors"), metadata={"format": "pt"})

    # Held-out perplexity by transformers itself (bf16 weights, float32 math), windows of 512.
    model = model.float()
    held_ids = tok.encode("\n\n".join(held) + "\n").ids
    nll, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(held_ids) - 1, 512):
            chunk = torch.tensor([held_ids[s:s + 513]], device="cuda")
            logits = model(chunk[:, :-1]).logits[0]
            nll += torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="sum").item()
            count += chunk.shape[1] - 1
    report = {"steps": steps, "best_validation_loss": best_val, "train_tokens": len(ids),
              "heldout_tokens": count, "heldout_perplexity_transformers": math.exp(nll / count)}
    with open(os.path.join(out, "training.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(report, flush=True)
    prompt = tok.encode("In the beginning").ids
    gen = model.generate(torch.tensor([prompt], device="cuda"), max_new_tokens=40, do_sample=False)
    print(tok.decode(gen[0].tolist()), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 800)
