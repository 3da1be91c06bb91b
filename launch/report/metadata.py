"""Runs and their metadata (model, method = update rule, K, alpha, seed, GXPO variant, accelerator (CAPO / NExt),
LoRA rank, configured total steps), from side files, saved configs, Hydra's records, launcher
records and the run name."""

from __future__ import annotations

import glob
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from launch import runmeta
from launch.report.sources import (
    Source,
    _frame,
    _load_structured,
    discover,
    looks_like_metrics,
    read_jsonl,
    read_wandb_binary,
)

# data_source -> column title, in the paper's order. Change here or with --benchmarks.
BENCHMARKS: dict[str, str] = {
    "math500": "Math-500",
    "amc23": "AMC23",
    "gsm8k": "GSM8k",
    "minerva_math": "Minerva",  # data_source written by verl_ext.data.prepare_math
    "olympiadbench": "Olympiad",
}
MODEL_ORDER = ["Qwen2.5-1.5B", "Qwen2.5-3B", "Qwen2.5-7B", "Llama3.2-3B"]
METHOD_ORDER = {"grpo": 0, "sfpo": 1, "gxpo": 2}
METHOD_TITLE = runmeta.RULE_TITLES
#: rows without an accelerator first, then CAPO, then NExt (each in METHOD_ORDER)
ACCEL_ORDER = {None: 0, "capo": 1, "capo_dr": 2, "capo_rein": 3, "capo_sgd": 4, "next": 5, "next_online": 6}
#: config key holding the configured number of training steps
TOTAL_STEPS_KEY = "trainer.total_training_steps"


@dataclass
class Run:
    name: str
    kind: str
    paths: list[str]
    hist: pd.DataFrame  # index: step (int, sorted); columns: metrics
    meta: dict[str, Any]
    meta_sources: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple:
        """(model, method, K, alpha, variant, accel, lora): the runs of one key are seeds of one table row."""
        m = self.meta
        return (m.get("model_display"), m.get("method"), m.get("K"), m.get("alpha"), m.get("variant"),
                m.get("accel"), m.get("lora") or 0)

    @property
    def last_step(self) -> int | None:
        """The last step the run logged anything at."""
        return int(self.hist.index.max()) if len(self.hist) else None

    @property
    def total_steps(self) -> int | None:
        """The configured number of training steps (``trainer.total_training_steps``), if known."""
        return self.meta.get("total_steps")

    @property
    def complete(self) -> bool | None:
        """Whether the run reached its configured total steps (None when that is unknown)."""
        if self.total_steps is None or self.last_step is None:
            return None
        return self.last_step >= self.total_steps


def config_meta(cfg: Any, seed_key: str = runmeta.DEFAULT_SEED_KEY) -> dict[str, Any]:
    """:func:`launch.runmeta.meta_from_config` plus ``total_steps`` (``trainer.total_training_steps``)."""
    meta = runmeta.meta_from_config(cfg, seed_key)
    total: Any = cfg
    for part in TOTAL_STEPS_KEY.split("."):
        total = total.get(part) if isinstance(total, dict) else None
    if isinstance(total, (int, float)) and not isinstance(total, bool) and total > 0:
        meta["total_steps"] = int(total)
    return meta


def _read_side_meta(src: Source, seed_key: str) -> tuple[list[tuple[str, dict]], dict | None]:
    """[(origin, meta)] in priority order, plus the config dict if one was found."""
    found: list[tuple[str, dict]] = []
    config = None
    cands: list[Path] = []
    if src.sidecar_stem is not None:
        s = src.sidecar_stem
        cands += [Path(f"{s}.meta.json"), Path(f"{s}.config.yaml"), Path(f"{s}.config.json")]
    d = src.run_dir
    if d is not None:
        cands += [d / "meta.json"]
        hydra_dirs = [d / ".hydra"] + sorted(Path(p) for p in glob.glob(str(d / "hydra" / "*" / ".hydra")))[::-1]
        for hd in hydra_dirs:
            if (hd / "config.yaml").exists():
                cands.append(hd / "config.yaml")
                break
        cands += [d / "config.yaml", d / "config.json", d / "files" / "config.yaml"]
    for path in cands:
        if not path.exists():
            continue
        try:
            obj = _load_structured(path)
        except Exception as exc:  # a broken side file must not stop the report
            warnings.warn(f"{path}: unreadable ({exc})")
            continue
        if not isinstance(obj, dict):
            continue
        if path.name.endswith("meta.json"):
            meta = dict(obj)
            if isinstance(obj.get("overrides"), list):  # recipe.gxpo.compare's meta.json: the run's overrides
                meta = {**runmeta.meta_from_overrides(obj["overrides"], seed_key),
                        **{k: v for k, v in obj.items() if k in runmeta.META_FIELDS}}
            found.append((str(path), meta))
        else:
            if path.parent.name == "files":
                obj = runmeta.unwrap_wandb_config(obj)
            config = config or obj
            found.append((str(path), config_meta(obj, seed_key)))
    if d is not None:
        # Hydra's group choices and overrides of the newest attempt
        hds = [d / ".hydra"] + sorted(Path(p) for p in glob.glob(str(d / "hydra" / "*" / ".hydra")))[::-1]
        for hd in hds:
            hy, ov = hd / "hydra.yaml", hd / "overrides.yaml"
            if hy.exists():
                try:
                    choices = (_load_structured(hy) or {}).get("hydra", {}).get("runtime", {}).get("choices", {})
                    m = {}
                    for group in runmeta.MODEL_GROUPS:
                        if isinstance(choices.get(group), str) and "model" not in m:
                            m["model"] = choices[group]
                    if isinstance(choices.get(runmeta.METHOD_GROUP), str):
                        m.update(runmeta.parse_method_group(choices[runmeta.METHOD_GROUP]))
                    found.append((str(hy), m))
                except Exception as exc:  # noqa: BLE001 - a broken side file must not stop the report
                    warnings.warn(f"{hy}: unreadable ({exc!r})")
            if ov.exists():
                try:
                    found.append((str(ov), runmeta.meta_from_overrides(_load_structured(ov) or [], seed_key)))
                except Exception as exc:  # noqa: BLE001
                    warnings.warn(f"{ov}: unreadable ({exc!r})")
            if hy.exists() or ov.exists():
                break
        launches = sorted(d.glob("launch-*.json"))
        if launches:
            try:
                rec = json.loads(launches[-1].read_text())
                job = rec.get("job", rec)
                md = dict(job.get("metadata", {}))
                ovs = json.loads(md.get("overrides", "[]"))
                m = runmeta.meta_from_overrides(ovs, seed_key)
                for k in runmeta.META_FIELDS:
                    if k in md and k not in m:
                        m[k] = md[k]
                for k in ("K", "lora"):
                    if k in m and m[k] is not None:
                        m[k] = int(float(m[k]))
                if "alpha" in m:
                    m["alpha"] = float(m["alpha"])
                found.append((str(launches[-1]), m))
            except Exception as exc:
                warnings.warn(f"{launches[-1]}: unreadable ({exc})")
    return found, config



def load_runs(paths: Sequence[str | os.PathLike], seed_key: str = runmeta.DEFAULT_SEED_KEY) -> list[Run]:
    sources = discover(paths)
    file_runs: list[Run] = []
    wandb_parts: dict[tuple[str, str], list[tuple[Source, list, dict]]] = {}
    for src in sources:
        if src.kind == "file":
            rows: list[dict[str, float]] = []
            for f in src.files:
                rows += read_jsonl(f)
            if not rows or not looks_like_metrics(rows):
                continue
            side, _ = _read_side_meta(src, seed_key)
            file_runs.append(_make_run(src.name, "file", src.files, rows, side))
        else:
            f = src.files[0]
            config: dict[str, Any] = {}
            name = None
            if f.suffix == ".jsonl":
                rows = read_jsonl(f)
                cfg_path = f.parent / "config.yaml"
                if cfg_path.exists():
                    try:
                        config = runmeta.unwrap_wandb_config(_load_structured(cfg_path) or {})
                    except Exception as exc:  # noqa: BLE001
                        warnings.warn(f"{cfg_path}: unreadable ({exc!r})")
                        config = {}
                meta_path = f.parent / "wandb-metadata.json"
                if meta_path.exists():
                    try:
                        name = json.loads(meta_path.read_text()).get("display_name")
                    except (OSError, ValueError, AttributeError) as exc:
                        warnings.warn(f"{meta_path}: unreadable ({exc!r})")
            else:
                rows, config, name = read_wandb_binary(f)
            if not rows:
                continue
            name = name or runmeta.meta_from_config(config).get("run_name") or src.name
            group = (str(src.run_dir.parent if src.run_dir else f.parent), name)
            wandb_parts.setdefault(group, []).append((src, rows, config))
    names = {r.name for r in file_runs}
    runs = list(file_runs)
    for (_parent, name), parts in sorted(wandb_parts.items()):
        if name in names:
            continue
        parts.sort(key=lambda p: p[0].run_dir.name if p[0].run_dir else "")
        rows = [r for _, rs, _ in parts for r in rs]
        config = next((c for _, _, c in reversed(parts) if c), {})
        side = [(f"wandb config of {parts[-1][0].files[0]}", config_meta(config, seed_key))]
        runs.append(_make_run(name, "wandb", [p[0].files[0] for p in parts], rows, side))
    return runs


def _make_run(name: str, kind: str, files, rows, side: list[tuple[str, dict]]) -> Run:
    explicit = [(o, m) for o, m in side if o.endswith("meta.json")]
    others = [(o, m) for o, m in side if not o.endswith("meta.json")]
    ordered = explicit + others + [("run name", runmeta.meta_from_name(name))]
    meta = runmeta.merge_meta(*[m for _, m in ordered])
    origins = {}
    for key in runmeta.META_FIELDS:
        for origin, m in ordered:
            if m.get(key) is not None:
                origins[key] = origin
                break
        else:
            if key in meta:
                origins[key] = "default (docs/algorithm.md)"
    if meta.get("total_steps") is not None:
        meta["total_steps"] = int(meta["total_steps"])
        origins["total_steps"] = next(o for o, m in ordered if m.get("total_steps") is not None)
    meta["model_display"] = runmeta.display_model(meta.get("model")) or "?"
    if meta.get("method") not in METHOD_ORDER:
        warnings.warn(f"run {name!r}: update rule unknown ({meta.get('method')!r}); "
                      "add a meta.json or a config with actor_rollout_ref.actor.update_rule")
    return Run(name=name, kind=kind, paths=[str(f) for f in files], hist=_frame(rows), meta=meta,
               meta_sources=origins)


