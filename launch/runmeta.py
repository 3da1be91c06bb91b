"""Run metadata shared by the launchers and the report.

A run is described by ``model``, ``method`` (the update rule: grpo | sfpo | gxpo), ``K``, ``alpha``,
``seed``, ``variant`` (GXPO's ``paper_text`` | ``authors``), ``accel`` (the accelerator beside the rule, by
recipe: ``capo`` / ``capo_dr`` / ``capo_rein`` / ``capo_sgd`` = CAPO's token mask in the authors' CAPO /
Dr.CAPO / ReinCAPO recipes or the SGD-model ablation, ``next`` / ``next_online`` = NExt as its authors
run it / the online variant; absent for none) and ``lora`` (the LoRA rank; absent or 0 for full-parameter
training). The launchers put these into run names and Ray job metadata; the report recovers them,
in this order of preference, from a run's saved config (Hydra ``.hydra/config.yaml``, wandb config,
the launcher's ``launch-*.json``), from its Hydra overrides, and last from its run name.

Run names written by ``launch.sweep`` look like ``table1_qwen2.5-1.5b_gxpo_k5_a1.0_s1``: tokens are
separated by ``_``; the method is one of the update rules, ``k<int>`` is K, ``a<float>`` is alpha,
``s<int>`` the seed, ``variant<name>`` GXPO's variant, ``capo`` / ``next`` the accelerator, ``lora<int>`` the LoRA rank, and the model
is the token right before the method (any token that looks like a model name: ``qwen2.5-1.5b``,
``llama3.2-3b``, ...).
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping

from recipe.gxpo.run_layout import sanitize  # noqa: F401  (re-exported: the launchers and the report name runs with it)
from verl_ext.core.config import UPDATE_RULES as RULES
from verl_ext.core.config import GXPO_VARIANTS, GXPOConfig, SFPOConfig

# Defaults of the config dataclasses (the one source), used when a run only names the rule; GXPO's
# alpha is resolved from its default variant (paper_text), so instances are read, not class fields.
_GXPO, _SFPO = GXPOConfig(), SFPOConfig()
DEFAULT_K = {"gxpo": _GXPO.K, "sfpo": _SFPO.K}
DEFAULT_ALPHA = {"gxpo": _GXPO.alpha, "sfpo": _SFPO.alpha}
DEFAULT_VARIANT = _GXPO.variant
#: GXPO's alpha when a run names only its variant (the variant supplies the default)
VARIANT_ALPHA = {v: GXPOConfig(variant=v).alpha for v in GXPO_VARIANTS}

# Hydra keys of the public config contract.
KEY_RULE = "actor_rollout_ref.actor.update_rule"
KEY_MODEL_PATH = "actor_rollout_ref.model.path"
KEY_LORA_RANK = "actor_rollout_ref.model.lora_rank"
#: accelerator -> the config switch that turns it on (conf/method/capo*.yaml, conf/method/next.yaml)
ACCELERATORS = {"capo": "actor_rollout_ref.actor.capo.enable", "next": "actor_rollout_ref.actor.next.enable"}
#: the update rules as tables print them
RULE_TITLES = {"grpo": "GRPO", "sfpo": "SFPO", "gxpo": "GXPO"}
#: config switch -> accelerator
_ACCEL_OF_KEY = {k: a for a, k in ACCELERATORS.items()}
#: accelerator labels by recipe (conf/method/capo*.yaml, next.yaml's next.mode) and their table titles
ACCEL_LABELS = {"capo": "CAPO", "capo_dr": "Dr.CAPO", "capo_rein": "ReinCAPO", "capo_sgd": "CAPO[SGD]",
                "next": "NExt", "next_online": "NExt[online]"}
#: (optimizer_model, fisher_tau, hessian_tau) -> CAPO recipe, when a config does not name it
CAPO_RECIPES = {("adam", 1e-4, 1e-2): "capo", ("adam", 1e-3, 5e-4): "capo_dr", ("adam", 1e-5, 1e-1): "capo_rein",
                ("sgd", 1e-3, 5e-4): "capo_sgd"}
_ACCEL_RE = r"(capo(?:_dr|_rein|_sgd)?|next(?:_online)?)"
#: metadata fields in the order the launchers record them and the report groups by
META_FIELDS = ("model", "method", "K", "alpha", "seed", "variant", "accel", "lora")
DEFAULT_SEED_KEY = "data.seed"
# Hydra groups of conf/ that select the base model / the update-rule preset.
MODEL_GROUPS = ("base_model", "model")
METHOD_GROUP = "method"


def backward_passes_per_update(method: str | None, K: int | None) -> int | None:
    """Nominal backward passes per mini-batch update (GXPO: the active phase)."""
    if method == "grpo":
        return 1
    if method == "sfpo":
        return (K if K is not None else DEFAULT_K["sfpo"]) + 1
    if method == "gxpo":
        return 3
    return None


def method_title(method: str | None, K: int | None = None, accel: str | None = None,
                 lora: int | None = None, alpha: float | None = None, variant: str | None = None) -> str:
    """The row name the report prints: ``GRPO``, ``GXPO K=5``, ``CAPO+GRPO``, ``CAPO+GXPO K=5``,
    ``NExt (LoRA GRPO)``, ``GRPO (LoRA r8)``; ``alpha`` is added when given (``α=0.5``), GXPO's
    ``variant`` too (``GXPO K=5 [authors]``)."""
    title = RULE_TITLES.get(str(method), str(method))
    if method != "grpo" and K is not None:
        title += f" K={K}"
        if alpha is not None:
            title += f" α={alpha:g}"
    if method == "gxpo" and variant:
        title += f" [{variant}]"
    if accel and accel.startswith("capo"):
        return f"{ACCEL_LABELS.get(accel, 'CAPO')}+{title}"
    if accel and accel.startswith("next"):
        return f"{ACCEL_LABELS.get(accel, 'NExt')} (LoRA {title})"
    if lora:
        return f"{title} (LoRA r{lora})"
    return title


def display_model(name: str | None) -> str | None:
    """``Qwen/Qwen2.5-1.5B-Instruct`` / ``qwen2.5-1.5b`` -> ``Qwen2.5-1.5B``; ``llama3.2-3b`` -> ``Llama3.2-3B``.

    Unknown names are returned unchanged (minus a leading path)."""
    if not name:
        return name
    base = str(name).rstrip("/").split("/")[-1]
    low = base.lower()
    m = re.search(r"qwen-?(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)b", low)
    if m:
        return f"Qwen{m.group(1)}-{m.group(2)}B"
    m = re.search(r"llama-?(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)b", low)
    if m:
        return f"Llama{m.group(1)}-{m.group(2)}B"
    return base


def _num(text: str) -> float | int | None:
    try:
        f = float(text)
    except (TypeError, ValueError):
        return None
    return int(f) if f.is_integer() and re.fullmatch(r"[+-]?\d+", str(text).strip()) else f


def parse_method_group(choice: str) -> dict[str, Any]:
    """A ``conf/method`` option (or ``gxpo_run.method``) -> metadata: ``gxpo_k5`` -> {method: gxpo, K: 5};
    ``grpo`` -> {method: grpo}; ``capo`` -> {method: grpo, accel: capo}; ``capo_gxpo_k5`` ->
    {method: gxpo, K: 5, accel: capo}; ``next`` -> {method: grpo, accel: next}; else {}."""
    m = re.fullmatch(r"(?:" + _ACCEL_RE + r"(?:[_-](grpo|sfpo|gxpo))?|(grpo|sfpo|gxpo))"
                     r"(?:[_-]k(\d+))?(?:[_-]a(\d+(?:\.\d+)?))?", str(choice).strip().lower())
    if not m:
        return {}
    accel, rule = m.group(1), m.group(2) or m.group(3) or "grpo"
    out: dict[str, Any] = {"method": rule}
    if accel:
        out["accel"] = accel
    if m.group(4):
        out["K"] = int(m.group(4))
    if m.group(5):
        out["alpha"] = float(m.group(5))
    return out


def _truthy(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    text = str(value).strip().strip("'\"").lower()
    return {"true": True, "1": True, "false": False, "0": False}.get(text)


def split_override(override: str) -> tuple[str, str] | None:
    """``+a.b=1`` -> (``a.b``, ``1``); ``~a.b`` and malformed strings -> None."""
    if "=" not in override:
        return None
    key, value = override.split("=", 1)
    key = key.lstrip("+~")
    return key, value


def meta_from_overrides(overrides: Iterable[str], seed_key: str = DEFAULT_SEED_KEY) -> dict[str, Any]:
    """Metadata implied by a list of Hydra overrides (later overrides win)."""
    meta: dict[str, Any] = {}
    for ov in overrides:
        kv = split_override(ov)
        if kv is None:
            continue
        key, value = kv
        value = value.strip().strip("'\"")
        if key in MODEL_GROUPS:
            meta["model"] = value
        elif key == METHOD_GROUP:
            meta.update(parse_method_group(value))
        elif key == KEY_RULE:
            meta["method"] = value.lower()
        elif key == KEY_MODEL_PATH and "model" not in meta:
            meta["model"] = value
        elif key == KEY_LORA_RANK:
            n = _num(value)
            if isinstance(n, int):
                meta["lora"] = n
        elif key in _ACCEL_OF_KEY:
            accel = _ACCEL_OF_KEY[key]
            on = _truthy(value)
            if on:
                meta["accel"] = accel
            elif on is False and meta.get("accel") == accel:
                meta["accel"] = None  # switched off again by a later override
        elif key == seed_key or key == "seed":
            n = _num(value)
            if n is not None:
                meta["seed"] = n
        elif key == "actor_rollout_ref.actor.gxpo.variant":
            meta["variant"] = value
        elif key == "actor_rollout_ref.actor.next.mode":
            meta["_next_mode"] = value
        else:
            m = re.fullmatch(r"actor_rollout_ref\.actor\.(gxpo|sfpo)\.(K|alpha)", key)
            if m:
                n = _num(value)
                if n is not None:
                    meta.setdefault("_per_rule", {}).setdefault(m.group(1), {})[m.group(2)] = n
    if meta.pop("_next_mode", None) == "online" and meta.get("accel") == "next":
        meta["accel"] = "next_online"
    per_rule = meta.pop("_per_rule", {})
    rule = meta.get("method")
    if rule in per_rule:
        meta.update(per_rule[rule])
    elif rule is None and len(per_rule) == 1:
        # e.g. only actor_rollout_ref.actor.gxpo.K=3 given: the rule itself comes from elsewhere
        (only_rule, vals), = per_rule.items()
        meta["_rule_hint"] = only_rule
        meta.update(vals)
    return meta


def _get(cfg: Mapping[str, Any] | None, dotted: str) -> Any:
    cur: Any = cfg
    for part in dotted.split("."):
        if isinstance(cur, Mapping) and part in cur:
            cur = cur[part]
        else:
            return None
    return cur


def unwrap_wandb_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """wandb's ``files/config.yaml`` stores ``key: {desc: ..., value: ...}``: return the plain dict."""
    out = {}
    for k, v in cfg.items():
        if k in ("_wandb", "wandb_version"):
            continue
        if isinstance(v, Mapping) and "value" in v and set(v) <= {"value", "desc"}:
            out[k] = v["value"]
        else:
            out[k] = v
    return out


def meta_from_config(cfg: Mapping[str, Any] | None, seed_key: str = DEFAULT_SEED_KEY) -> dict[str, Any]:
    """Metadata from a full (resolved) trainer config."""
    if not cfg:
        return {}
    meta: dict[str, Any] = {}
    rule = _get(cfg, KEY_RULE)
    if isinstance(rule, str):
        meta["method"] = rule.lower()
        if meta["method"] in ("gxpo", "sfpo"):
            for field in ("K", "alpha"):
                v = _get(cfg, f"actor_rollout_ref.actor.{meta['method']}.{field}")
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    meta[field] = v
        variant = _get(cfg, "actor_rollout_ref.actor.gxpo.variant")
        if meta["method"] == "gxpo" and isinstance(variant, str):
            meta["variant"] = variant
    for accel, key in ACCELERATORS.items():
        if _get(cfg, key) is True:
            meta["accel"] = _accel_recipe(cfg, accel)
            break
    else:
        if isinstance(rule, str):
            meta["accel"] = None  # a full config says so: no accelerator
    lora = _get(cfg, KEY_LORA_RANK)
    if isinstance(lora, int) and not isinstance(lora, bool):
        meta["lora"] = lora
    path = _get(cfg, KEY_MODEL_PATH)
    run_model = _get(cfg, "gxpo_run.model")  # the conf/base_model option name, when composed from conf/
    if isinstance(run_model, str) and run_model:
        meta["model"] = run_model
    elif isinstance(path, str) and path:
        meta["model"] = path
    seed = _get(cfg, seed_key)
    if isinstance(seed, (int, float)) and not isinstance(seed, bool):
        meta["seed"] = seed
    name = _get(cfg, "trainer.experiment_name")
    if isinstance(name, str):
        meta["run_name"] = name
    return meta


def _accel_recipe(cfg: Mapping[str, Any], accel: str) -> str:
    """The recipe label of an accelerator that is on in a full config: CAPO's by its method name
    (``gxpo_run.method``) or its optimizer model and thresholds; NExt's by ``next.mode``."""
    if accel == "next":
        return "next_online" if _get(cfg, "actor_rollout_ref.actor.next.mode") == "online" else "next"
    named = parse_method_group(str(_get(cfg, "gxpo_run.method") or "")).get("accel")
    if named and named.startswith("capo"):
        return named
    capo = _get(cfg, "actor_rollout_ref.actor.capo") or {}
    try:
        key = (str(capo.get("optimizer_model", "sgd")), float(capo.get("fisher_tau")), float(capo.get("hessian_tau")))
    except (TypeError, ValueError):
        return "capo"
    return next((label for k, label in CAPO_RECIPES.items() if k[0] == key[0] and math.isclose(k[1], key[1])
                 and math.isclose(k[2], key[2])), "capo")


_B, _E = r"(?:^|[_\-/])", r"(?=$|[_\-/])"  # token boundaries in run names
_MODEL_PATTERNS = (
    r"qwen\d+(?:\.\d+)?-\d+(?:\.\d+)?b(?:-instruct)?",
    r"llama-?\d+(?:\.\d+)?-\d+(?:\.\d+)?b(?:-instruct)?",
)


def meta_from_name(name: str) -> dict[str, Any]:
    """Best-effort metadata from a run name (see module docstring). Tokens are separated by ``_``,
    ``-`` or ``/``: ``<rule>``, ``k<K>``, ``a<alpha>``, ``s<seed>``; the model is a ``qwen<v>-<size>b``
    / ``llama<v>-<size>b`` substring, else the ``_``-token before the rule if it ends in ``<size>b``."""
    meta: dict[str, Any] = {}
    low = str(name).lower()
    m = re.search(_B + r"(grpo|sfpo|gxpo)" + _E, low)
    if m:
        meta["method"] = m.group(1)
    m = re.search(_B + r"k(\d+)" + _E, low)
    if m:
        meta["K"] = int(m.group(1))
    m = re.search(_B + r"(?:a|alpha)(\d+(?:\.\d+)?)" + _E, low)
    if m:
        meta["alpha"] = float(m.group(1))
    m = re.search(_B + r"(?:s|seed)(\d+)" + _E, low)
    if m:
        meta["seed"] = int(m.group(1))
    m = re.search(_B + r"variant(" + "|".join(GXPO_VARIANTS) + r")" + _E, low)
    if m:
        meta["variant"] = m.group(1)
    m = re.search(_B + _ACCEL_RE + _E, low)
    if m:
        meta["accel"] = m.group(1)
        if "method" not in meta:
            meta["method"] = "grpo"
    m = re.search(_B + r"lora(\d+)" + _E, low)
    if m:
        meta["lora"] = int(m.group(1))
    for pat in _MODEL_PATTERNS:
        m = re.search(pat, low)
        if m:
            meta["model"] = str(name)[m.start() : m.end()]
            break
    else:
        tokens = [t for t in re.split(r"[_/]+", str(name)) if t]
        for i, tok in enumerate(tokens[1:], start=1):
            if tok.lower() in RULES and re.search(r"\d+(\.\d+)?b$", tokens[i - 1].lower()):
                meta["model"] = tokens[i - 1]
                break
    return meta


def merge_meta(*sources: Mapping[str, Any]) -> dict[str, Any]:
    """First source that has a field wins; fills rule defaults for K/alpha; drops K/alpha for GRPO.

    ``accel: None`` in a source (a full config with every accelerator off) is an answer too: later
    sources cannot add one; ``accel`` is absent from the result when there is none, and ``lora`` when
    it is 0."""
    out: dict[str, Any] = {}
    for src in sources:
        for k, v in (src or {}).items():
            if k not in out and (v is not None or k == "accel"):
                out[k] = v
    if out.get("accel") is None:
        out.pop("accel", None)
    if not out.get("lora"):
        out.pop("lora", None)
    hint = out.pop("_rule_hint", None)
    if "method" not in out and hint:
        out["method"] = hint
    method = out.get("method")
    if method == "gxpo":
        out.setdefault("variant", DEFAULT_VARIANT)
        out.setdefault("alpha", VARIANT_ALPHA.get(out["variant"], DEFAULT_ALPHA["gxpo"]))
    else:
        out.pop("variant", None)
    if method in DEFAULT_K:
        out.setdefault("K", DEFAULT_K[method])
        out.setdefault("alpha", DEFAULT_ALPHA[method])
        out["K"] = int(out["K"])
        out["alpha"] = float(out["alpha"])
    elif method == "grpo":
        out.pop("K", None)
        out.pop("alpha", None)
    return out
