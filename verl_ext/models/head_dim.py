"""The same tiny model with wider attention heads, for attention kernels that need a larger head_dim.

vLLM's CPU attention supports head sizes 32, 64, 80, ... only; the embedded model
(:mod:`verl_ext.models.tiny`, Qwen2, hidden 64, 4 heads) has head_dim 16. :func:`widen_heads` writes an
equivalent model with head_dim 32 (or any larger even size): it computes the same function -- the same
logits for every input, up to float rounding -- so a rollout served from it samples what the original
would.

How (per layer, per head): a Qwen2 head of size d holds rotary pairs ``(j, j + d/2)`` turning at
``theta**(-2j/d)``; in a head of size D (a multiple of d) the pair ``(i, i + D/2)`` turns at
``theta**(-2i/D)``, so original dimension ``j`` goes to ``i = j*D/d`` and ``j + d/2`` to ``i + D/2`` --
the rotation each pair gets is unchanged. Every other query/key
dimension is zero, so ``q . k`` is unchanged; the query is scaled by ``sqrt(D/d)`` to undo the change of
the softmax scale ``1/sqrt(head_dim)``. Values use the same placement, and the output projection reads
only the placed columns. Zero dimensions get zero gradients (each one's gradient is a product with
another zero), so training keeps the model equivalent to a Qwen2 of the original shape.

vLLM's Qwen2 derives head_dim from ``hidden_size / num_attention_heads`` and ignores a ``head_dim`` key,
so the result is written as a ``LlamaForCausalLM`` (same blocks: RMSNorm, rotary attention, SiLU MLP)
with ``head_dim=D`` and ``attention_bias=True`` (Qwen2's q/k/v biases; the output projection's bias,
which Qwen2 lacks, starts at zero). The tokenizer files are copied unchanged (the byte-level tokenizer of
:mod:`verl_ext.models.tiny` tokenises the same under either architecture).

Caching: a manifest (``verl_ext_head_dim_manifest.json``, written last) records the head size and the
source's manifests; a directory whose manifest matches is reused.
"""

from __future__ import annotations

import json
import os
import shutil

from .publish import building

MANIFEST = "verl_ext_head_dim_manifest.json"
_BUILDER_VERSION = 1
_COPIED = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _source_manifests(src_dir: str) -> dict:
    out = {}
    for name in sorted(os.listdir(src_dir)):
        if name.startswith("verl_ext_") and name.endswith("manifest.json"):
            with open(os.path.join(src_dir, name), encoding="utf-8") as f:
                out[name] = json.load(f)
    return out


def head_dim_of(model_dir: str) -> int:
    """The attention head size of a Hugging Face model directory (``head_dim`` or hidden / heads)."""
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    return int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])


def _placement(d: int, D: int):
    """Index in the wide head of each original dimension (rotary pairs kept, see module docstring)."""
    import torch

    k = D // d
    half = d // 2
    idx = torch.empty(d, dtype=torch.long)
    for j in range(half):
        idx[j] = j * k
        idx[j + half] = j * k + D // 2
    return idx


def widen_heads(src_dir: str, out_dir: str, head_dim: int = 32) -> str:
    """Write the model at ``src_dir`` (a Qwen2 from :mod:`verl_ext.models.tiny`, possibly trained) with
    attention heads of size ``head_dim`` to ``out_dir`` as an equivalent Llama (module docstring);
    return ``out_dir``'s absolute path. Reuses a finished ``out_dir`` built from the same source."""
    import torch
    from safetensors.torch import load_file, save_file

    src_dir = os.path.abspath(os.path.expanduser(src_dir))
    out_dir = os.path.abspath(os.path.expanduser(out_dir))
    with open(os.path.join(src_dir, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    if cfg.get("model_type") != "qwen2":
        raise ValueError(f"{src_dir}: widen_heads converts Qwen2 models (model_type qwen2), got {cfg.get('model_type')!r}")
    d = head_dim_of(src_dir)
    if head_dim < d or head_dim % d or d % 2:
        raise ValueError(f"head_dim={head_dim} must be a multiple of the model's head size {d} (which must be even)")
    manifest = {"builder": "verl_ext.models.head_dim", "version": _BUILDER_VERSION, "head_dim": head_dim,
                "source": _source_manifests(src_dir)}
    try:
        with open(os.path.join(out_dir, MANIFEST), encoding="utf-8") as f:
            if json.load(f) == manifest:
                return out_dir
    except (OSError, ValueError):
        pass
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, MANIFEST)):
        raise ValueError(f"{out_dir} is not empty and was not built by widen_heads; refusing to overwrite it")

    n_heads, n_kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hidden = cfg["hidden_size"]
    idx = _placement(d, head_dim)
    scale = (head_dim / d) ** 0.5

    def widen_rows(t: torch.Tensor, heads: int, factor: float = 1.0) -> torch.Tensor:
        # t: (heads*d, ...) -> (heads*head_dim, ...), original rows placed at idx within each head
        rest = t.shape[1:]
        src = t.reshape(heads, d, *rest)
        wide = torch.zeros(heads, head_dim, *rest, dtype=t.dtype)
        wide[:, idx] = src * factor
        return wide.reshape(heads * head_dim, *rest)

    state = load_file(os.path.join(src_dir, "model.safetensors"))
    out = {}
    for name, t in state.items():
        if name.endswith("self_attn.q_proj.weight") or name.endswith("self_attn.q_proj.bias"):
            out[name] = widen_rows(t, n_heads, scale)
        elif name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias",
                            "self_attn.v_proj.weight", "self_attn.v_proj.bias")):
            out[name] = widen_rows(t, n_kv)
        elif name.endswith("self_attn.o_proj.weight"):
            out[name] = widen_rows(t.t(), n_heads).t().contiguous()
            out[name.replace(".weight", ".bias")] = torch.zeros(hidden, dtype=t.dtype)
        else:
            out[name] = t

    new_cfg = {k: v for k, v in cfg.items() if k not in ("use_sliding_window", "sliding_window", "max_window_layers",
                                                          "layer_types", "architectures", "model_type")}
    new_cfg.update(architectures=["LlamaForCausalLM"], model_type="llama", head_dim=head_dim,
                   attention_bias=True, mlp_bias=False)

    with building(out_dir, prefix=".widen-") as tmp:
        save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(tmp, "model.safetensors"),
                  metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(new_cfg, f, indent=2, sort_keys=True)
        for name in _COPIED:
            if os.path.exists(os.path.join(src_dir, name)):
                shutil.copy2(os.path.join(src_dir, name), os.path.join(tmp, name))
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
    return out_dir
