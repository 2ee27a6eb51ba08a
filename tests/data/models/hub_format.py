"""transformers 5 keeps MoE experts fused in memory (experts.gate_up_proj [E, 2I, H],
experts.down_proj [E, H, I]); published checkpoints keep one tensor per expert. hub_state_dict
gives a model's tensors under the published names, in bf16, so what we write is what real
checkpoints look like."""
import torch


def hub_state_dict(model, arch):
    out = {}
    for name, t in model.state_dict().items():
        t = t.detach().to(torch.bfloat16).contiguous()
        if arch == "mixtral":
            name = name.replace(".mlp.", ".block_sparse_moe.")
        if name.endswith("experts.gate_up_proj"):
            prefix, inter = name[: -len("gate_up_proj")], t.shape[1] // 2
            gate, up = ("w1", "w3") if arch == "mixtral" else ("gate_proj", "up_proj")
            for e in range(t.shape[0]):
                out[f"{prefix}{e}.{gate}.weight"] = t[e, :inter].clone()
                out[f"{prefix}{e}.{up}.weight"] = t[e, inter:].clone()
        elif name.endswith("experts.down_proj"):
            prefix = name[: -len("down_proj")]
            down = "w2" if arch == "mixtral" else "down_proj"
            for e in range(t.shape[0]):
                out[f"{prefix}{e}.{down}.weight"] = t[e].clone()
        else:
            out[name] = t
    if model.config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out
