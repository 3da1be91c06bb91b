"""The embedded task under ``actor_rollout_ref.rollout.name=vllm``: the same model with vLLM-sized heads.

vLLM's CPU attention supports head sizes 32, 64, 80, ... only, and the embedded model
(``conf/experiment/cpu_arithmetic.yaml``) has 4 heads of 16. :func:`use_vllm_model_variant` runs after
:func:`recipe.gxpo.embedded.prepare_embedded_assets` and, when the rollout is vLLM and the model is the
embedded one, writes the equivalent model with heads of 32 next to it
(:func:`verl_ext.models.head_dim.widen_heads`: same logits, so the same task and starting skill) and
points ``actor_rollout_ref.model.path`` at it. It takes well under a second and is reused once built.
"""

from __future__ import annotations

import os

from omegaconf import DictConfig, open_dict

#: head sizes vLLM's CPU attention accepts
VLLM_CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256)
VARIANT_SUFFIX = "-hd32"


def use_vllm_model_variant(config: DictConfig) -> list[str]:
    """Switch the embedded model to its head-size-32 twin for ``rollout.name=vllm``; return what was built."""
    from recipe.gxpo.embedded import is_embedded_model
    from verl_ext.models.head_dim import MANIFEST, head_dim_of, widen_heads

    emb = config.get("gxpo_embedded")
    if emb is None or config.actor_rollout_ref.rollout.get("name") != "vllm":
        return []
    model_path = os.path.abspath(os.path.expanduser(str(config.actor_rollout_ref.model.path)))
    if not is_embedded_model(emb, model_path) or head_dim_of(model_path) in VLLM_CPU_HEAD_DIMS:
        return []
    variant = model_path + VARIANT_SUFFIX
    had = os.path.exists(os.path.join(variant, MANIFEST))
    widen_heads(model_path, variant, head_dim=32)
    with open_dict(config):
        config.actor_rollout_ref.model.path = variant
    print(f"[gxpo] rollout.name=vllm: the embedded model with attention heads of 32 (vLLM's CPU attention "
          f"needs >= 32; same logits): {variant}", flush=True)
    return [] if had else [variant]
