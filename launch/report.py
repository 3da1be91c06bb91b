"""Tables and plots of the GXPO paper from the metrics that runs logged.

    python -m launch.report --runs DIR [DIR ...] --out OUT_DIR
        [--metric val-core/math500/acc/mean@16 ...] [--benchmarks math500=Math-500,amc23=AMC23,...]
        [--n 16] [--table1-at final|best] [--iso-bp 108,204,300] [--iso-hours 4,8,12]
        [--interp linear|previous] [--include-val-time] [--seed-key data.seed] [--no-plots]

Inputs (``--runs`` takes files or directories, searched recursively)
--------------------------------------------------------------------
1. verl's file logger (``trainer.logger`` containing ``file``; ``verl/utils/tracking.py::FileLogger``):
   one JSON object per ``Tracking.log`` call, ``{"step": <int>, "data": {<metric>: <value>, ...}}``,
   written to ``$VERL_FILE_LOGGER_PATH`` or else
   ``${VERL_FILE_LOGGER_ROOT:-.}/<trainer.project_name>/<trainer.experiment_name>.jsonl``.
   The logger truncates its file when it starts, so ``launch.submit --log-dir`` gives every
   submission its own ``<log_dir>/<run>/metrics-<stamp>.jsonl``; all ``metrics*.jsonl`` files of
   one directory are read as segments of ONE run (named after the directory; later files win on
   overlapping steps). Any other ``*.jsonl`` is one run named after its file stem.
2. A simple JSONL: ``{"step": <int>, <metric>: <value>, ...}`` per line (``_step`` or
   ``training/global_step`` are accepted as the step key). Files whose lines carry no numeric metric
   with a ``/`` in its name (e.g. verl's generation dumps) are ignored.
3. wandb run directories ``.../wandb/{offline-run,run}-<date>-<id>/``: ``files/wandb-history.jsonl``
   (one ``{"_step": s, ...}`` per row) when present (older wandb), else the binary ``run-<id>.wandb``
   (current wandb writes only that offline): its LevelDB-style log records are decoded with wandb's
   own protobuf ``Record`` (``history`` and ``run``/``config`` records). Runs with the same display
   name inside one ``wandb/`` directory (resumed runs) are merged. A wandb run whose name equals a
   file-logger run's name is skipped (the file logger is preferred).

Run metadata (model, method = update rule, K, alpha, seed), first source that has a field wins:
``meta.json`` / ``<stem>.meta.json`` (explicit: {"model": ..., "method": ..., "K": ..., "alpha": ...}),
the saved config (Hydra ``.hydra/config.yaml`` in the run dir or under ``hydra/*/``, wandb's run
config, ``config.yaml``/``config.json``), Hydra's ``.hydra/hydra.yaml`` group choices
(``base_model=``, ``method=gxpo_k5``) and ``.hydra/overrides.yaml``, the launcher's ``launch-*.json``,
and last the run name (``launch.runmeta.meta_from_name``). Unset K/alpha take the spec defaults
(GXPO K=5, alpha=1.0; SFPO K=3, alpha=0.8). Runs with the same (model, method, K, alpha) but
different seeds are averaged (curves on the steps all seeds evaluated).

Derived quantities per run
--------------------------
* step: ``training/global_step`` (the logger's ``step``); step 0 is the validation before training.
* backward passes: the logged cumulative ``<rule>/backward_passes`` (any ``*/backward_passes``),
  forward-filled; 0 at step 0. Without it, nominal: GRPO 1, SFPO K+1 per step, GXPO 3 per step
  while ``gxpo/active`` is 1 (3 when that metric is absent) and 1 after.
* hours: cumulative sum of ``timing_s/step`` / 3600 (training only: verl times validation separately
  as ``timing_s/testing``, which ``--include-val-time`` adds); wandb's ``_runtime`` when no step
  timing was logged. 0 at step 0.
* accuracy: ``val-core/<data_source>/acc/mean@N`` = mean over N samples per prompt, i.e. the
  sampled pass@1 the paper reports. A metric given without ``@N`` (or a bare data source such as
  ``math500``) takes the largest N the run logged (``--n`` to fix it; verl puts only the largest N
  under ``val-core``); a bare data source falls back to ``val-core/<ds>/reward/mean@N`` when the
  reward function returned no ``acc``. ``avg`` is the mean over the Table 1 benchmarks a run logged
  at a step.

Outputs (in OUT_DIR)
--------------------
* ``table1.{md,csv}``: Table 1 layout: Model | Method | K | BP | one column per benchmark | Avg.,
  in percent. Values at the last validation step (``--table1-at best``: at the validation step with
  the best Avg.). BP = nominal backward passes per update (GRPO 1, SFPO K+1, GXPO 3 while active).
  Avg. is the mean over the benchmark columns (empty when a run lacks one of them); benchmark
  columns no run logged are dropped.
* ``table2_<metric>.{md,csv}`` per ``--metric``: Table 2 layout: Peak Acc. | Steps to match GRPO |
  Step speedup | Hours to match GRPO | Time speedup | BPs to match GRPO | BP speedup. Rules: only
  validation steps >= 1 count. GRPO's peak is the max of its validation accuracies; the threshold of
  every run of the same model is that peak. "to match" = the FIRST validation step whose accuracy is
  >= the threshold (GRPO: the step of its own first peak), with the run's hours and cumulative
  backward passes at that step (no interpolation: accuracy is only known at validation steps).
  Speedup = GRPO's value / the run's value (> 1 is faster). Runs that never reach it show "n/r".
* ``iso_bp.{md,csv}`` / ``iso_hours.{md,csv}``: accuracy (percent) of every run per benchmark and
  Avg. at equal budgets: by default GRPO's final backward-pass count (its cumulative count at its
  last validation step) and GRPO's final hours, per model; ``--iso-bp`` / ``--iso-hours`` give fixed
  budgets (the paper's C.1 and C.2: 108,204,300 BP and 4,8,12 h). Interpolation rule
  (``--interp``): ``linear`` (default) interpolates linearly in the budget between the two
  validation points around it (exact at a validation point); ``previous`` takes the last validation
  point at or below the budget (the checkpoint one would actually hold). Budgets before the first
  or after the last validation point are never extrapolated: the cell stays empty.
* ``plots/<metric>_vs_{step,bp,hours}.png``: accuracy vs training steps / backward passes / hours,
  one panel per model, one line per method/K/alpha, GRPO's peak dashed.
* ``runs.csv``: the runs found, their metadata and where each field came from; ``report.md``: all
  tables in one file.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import struct
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from launch import runmeta

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
METHOD_TITLE = {"grpo": "GRPO", "sfpo": "SFPO", "gxpo": "GXPO"}
DEFAULT_METRICS = ["math500", "avg"]
STEP_KEYS = ("step", "_step", "training/global_step")
EPS = 1e-12


# ----------------------------------------------------------------------------------------------
# reading logs
# ----------------------------------------------------------------------------------------------
def _numeric(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value) if value.strip().lower() in ("nan", "inf", "-inf") else None
        except ValueError:
            return None
    return None


def _row(step: Any, metrics: Mapping[str, Any]) -> dict[str, float] | None:
    try:
        s = int(step)
    except (TypeError, ValueError):
        return None
    row: dict[str, float] = {}
    for key, value in metrics.items():
        if key in STEP_KEYS and key != "training/global_step":
            continue
        v = _numeric(value)
        if v is not None:
            row[key] = v
    row["__step"] = s
    return row


def read_jsonl(path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows ``{"__step": s, metric: value}`` of a verl file-logger / simple / wandb-history JSONL."""
    rows = []
    bad = 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                bad += 1  # e.g. the last line of a killed run
                continue
            if not isinstance(obj, dict):
                continue
            if isinstance(obj.get("data"), dict) and "step" in obj:  # verl FileLogger
                row = _row(obj["step"], obj["data"])
            else:
                step = next((obj[k] for k in STEP_KEYS if k in obj), None)
                row = _row(step, obj)
            if row is not None:
                rows.append(row)
    if bad:
        warnings.warn(f"{path}: skipped {bad} malformed line(s)")
    return rows


def looks_like_metrics(rows: Sequence[Mapping[str, float]]) -> bool:
    return any(any("/" in k for k in r if k != "__step") for r in rows[:50])


_WANDB_BLOCK = 32768
_WANDB_HEADER = 7  # b":W&B" + uint16 magic + uint8 version
_WANDB_RECORD_HEADER = 7  # uint32 crc + uint16 length + uint8 type


def iter_wandb_records(path: str | os.PathLike) -> Iterable[bytes]:
    """Payloads of wandb's append-only ``.wandb`` log (LevelDB log framing: 32 KiB blocks, records
    of type FULL=1 or FIRST=2 / MIDDLE=3 / LAST=4 fragments, zero padding at block ends)."""
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a wandb run file")
    pos, pending = _WANDB_HEADER, b""
    while pos + _WANDB_RECORD_HEADER <= len(data):
        left = _WANDB_BLOCK - pos % _WANDB_BLOCK
        if left < _WANDB_RECORD_HEADER:
            pos += left
            continue
        _crc, length, rtype = struct.unpack("<IHB", data[pos : pos + _WANDB_RECORD_HEADER])
        pos += _WANDB_RECORD_HEADER
        if rtype == 0 and length == 0:  # block padding
            pos += left - _WANDB_RECORD_HEADER
            continue
        chunk = data[pos : pos + length]
        pos += length
        if rtype == 1:
            yield chunk
        elif rtype == 2:
            pending = chunk
        elif rtype == 3:
            pending += chunk
        elif rtype == 4:
            yield pending + chunk
            pending = b""


def _item_key(item) -> str:
    return item.key if item.key else ".".join(item.nested_key)


def read_wandb_binary(path: str | os.PathLike) -> tuple[list[dict[str, float]], dict[str, Any], str | None]:
    """(history rows, config, display name) of a ``run-<id>.wandb`` file."""
    from wandb.proto import wandb_internal_pb2 as pb  # wandb's own record definition

    rows: list[dict[str, float]] = []
    config: dict[str, Any] = {}
    name = None
    for payload in iter_wandb_records(path):
        rec = pb.Record()
        try:
            rec.ParseFromString(payload)
        except Exception:
            continue
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            values = {}
            for item in rec.history.item:
                try:
                    values[_item_key(item)] = json.loads(item.value_json)
                except (ValueError, TypeError):
                    continue
            step = rec.history.step.num if rec.history.HasField("step") else values.get("_step")
            row = _row(step, values)
            if row is not None:
                rows.append(row)
        elif kind in ("run", "config"):
            updates = rec.run.config.update if kind == "run" else rec.config.update
            if kind == "run" and rec.run.display_name:
                name = rec.run.display_name
            for item in updates:
                key = _item_key(item)
                if key.startswith("_wandb"):
                    continue
                try:
                    config[key] = json.loads(item.value_json)
                except (ValueError, TypeError):
                    pass
    return rows, config, name


def _load_structured(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    import yaml

    return yaml.safe_load(text)


@dataclass
class Source:
    kind: str  # "file" (verl file logger / simple jsonl) | "wandb"
    files: list[Path]
    name: str
    run_dir: Path | None = None  # directory whose side files describe this run
    sidecar_stem: Path | None = None


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
        m = self.meta
        return (m.get("model_display"), m.get("method"), m.get("K"), m.get("alpha"))


_SKIP_DIRS = {".git", ".venv", "__pycache__", ".hydra", "checkpoints", "node_modules"}


def _is_wandb_run_dir(d: Path) -> bool:
    return bool(re.match(r"(offline-)?run-", d.name)) and (
        (d / "files" / "wandb-history.jsonl").exists() or any(d.glob("run-*.wandb"))
    )


def discover(paths: Sequence[str | os.PathLike]) -> list[Source]:
    sources: list[Source] = []
    for root in paths:
        root = Path(root)
        if root.is_file():
            if root.suffix == ".wandb":
                sources.append(Source("wandb", [root], root.stem, run_dir=root.parent))
            elif root.suffix == ".jsonl":
                sources.append(_jsonl_source(root, single_in_dir=False))
            continue
        if not root.is_dir():
            raise FileNotFoundError(f"--runs {root}: no such file or directory")
        for dirpath, dirnames, filenames in os.walk(root):
            d = Path(dirpath)
            if _is_wandb_run_dir(d):
                wb = sorted(d.glob("run-*.wandb"))
                hist = d / "files" / "wandb-history.jsonl"
                sources.append(Source("wandb", [hist] if hist.exists() else wb[:1], d.name, run_dir=d))
                dirnames[:] = []
                continue
            dirnames[:] = sorted(x for x in dirnames if x not in _SKIP_DIRS)
            jsonls = sorted(f for f in filenames if f.endswith(".jsonl"))
            segments = [f for f in jsonls if f.startswith("metrics")]
            others = [f for f in jsonls if not f.startswith("metrics")]
            if segments:
                single = not others
                sources.append(Source("file", [d / f for f in segments], d.name,
                                      run_dir=d if single else None))
            for f in others:
                sources.append(_jsonl_source(d / f, single_in_dir=(len(jsonls) == 1)))
    return sources


def _jsonl_source(path: Path, single_in_dir: bool) -> Source:
    return Source("file", [path], path.stem, run_dir=path.parent if single_in_dir else None,
                  sidecar_stem=path.with_suffix(""))


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
            found.append((str(path), dict(obj)))
        else:
            if path.parent.name == "files":
                obj = runmeta.unwrap_wandb_config(obj)
            config = config or obj
            found.append((str(path), runmeta.meta_from_config(obj, seed_key)))
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
                except Exception:
                    pass
            if ov.exists():
                try:
                    found.append((str(ov), runmeta.meta_from_overrides(_load_structured(ov) or [], seed_key)))
                except Exception:
                    pass
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
                for k in ("model", "method", "K", "alpha", "seed"):
                    if k in md and k not in m:
                        m[k] = md[k]
                if "K" in m:
                    m["K"] = int(float(m["K"]))
                if "alpha" in m:
                    m["alpha"] = float(m["alpha"])
                found.append((str(launches[-1]), m))
            except Exception as exc:
                warnings.warn(f"{launches[-1]}: unreadable ({exc})")
    return found, config


def _frame(rows: list[dict[str, float]]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame(index=pd.Index([], name="step", dtype=int))
    df = pd.DataFrame(rows)
    # later rows win for the same step (resumed runs re-log steps); groupby.last keeps the last non-null
    df = df.groupby("__step", sort=True).last()
    df.index = df.index.astype(int)
    df.index.name = "step"
    return df


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
                    except Exception:
                        config = {}
                meta_path = f.parent / "wandb-metadata.json"
                if meta_path.exists():
                    try:
                        name = json.loads(meta_path.read_text()).get("display_name")
                    except Exception:
                        pass
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
        side = [(f"wandb config of {parts[-1][0].files[0]}", runmeta.meta_from_config(config, seed_key))]
        runs.append(_make_run(name, "wandb", [p[0].files[0] for p in parts], rows, side))
    return runs


def _make_run(name: str, kind: str, files, rows, side: list[tuple[str, dict]]) -> Run:
    explicit = [(o, m) for o, m in side if o.endswith("meta.json")]
    others = [(o, m) for o, m in side if not o.endswith("meta.json")]
    ordered = explicit + others + [("run name", runmeta.meta_from_name(name))]
    meta = runmeta.merge_meta(*[m for _, m in ordered])
    origins = {}
    for key in ("model", "method", "K", "alpha", "seed"):
        for origin, m in ordered:
            if m.get(key) is not None:
                origins[key] = origin
                break
        else:
            if key in meta:
                origins[key] = "spec default"
    meta["model_display"] = runmeta.display_model(meta.get("model")) or "?"
    if meta.get("method") not in METHOD_ORDER:
        warnings.warn(f"run {name!r}: update rule unknown ({meta.get('method')!r}); "
                      "add a meta.json or a config with actor_rollout_ref.actor.update_rule")
    return Run(name=name, kind=kind, paths=[str(f) for f in files], hist=_frame(rows), meta=meta,
               meta_sources=origins)


# ----------------------------------------------------------------------------------------------
# derived curves
# ----------------------------------------------------------------------------------------------
@dataclass
class Options:
    benchmarks: dict[str, str] = field(default_factory=lambda: dict(BENCHMARKS))
    n: int | None = None
    include_val_time: bool = False
    interp: str = "linear"


def resolve_metric(hist: pd.DataFrame, spec: str, n: int | None = None) -> str | None:
    """Column of ``hist`` for a metric spec (exact name, name without ``@N``, or a data source).

    A bare data source means ``val-core/<ds>/acc/mean@N``, or ``val-core/<ds>/reward/mean@N`` when the
    reward function returned no ``acc`` (verl then makes ``reward`` the core variable)."""
    if spec in hist.columns:
        return spec
    if not spec.startswith("val-"):
        return (resolve_metric(hist, f"val-core/{spec}/acc/mean", n)
                or resolve_metric(hist, f"val-core/{spec}/reward/mean", n))
    base = spec
    if "@" in base.rsplit("/", 1)[-1]:
        return base if base in hist.columns else None
    if n is not None:
        col = f"{base}@{n}"
        return col if col in hist.columns else None
    best = None
    for col in hist.columns:
        m = re.fullmatch(re.escape(base) + r"@(\d+)", col)
        if m and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), col)
    return best[1] if best else None


def backward_passes(run: Run) -> tuple[pd.Series, str]:
    hist = run.hist
    method = run.meta.get("method")
    cols = [f"{method}/backward_passes"] + [f"{r}/backward_passes" for r in runmeta.RULES]
    col = next((c for c in cols if c in hist.columns), None)
    if col is None:
        col = next((c for c in hist.columns if c.endswith("/backward_passes")), None)
    if col is not None:
        bp = hist[col].ffill()
        bp[bp.index <= 0] = bp[bp.index <= 0].fillna(0.0)
        return bp, "logged"
    per = runmeta.backward_passes_per_update(method, run.meta.get("K")) or 1
    inc = pd.Series(float(per), index=hist.index)
    if method == "gxpo" and "gxpo/active" in hist.columns:
        active = hist["gxpo/active"].ffill().fillna(1.0)
        inc = pd.Series(np.where(active > 0.5, 3.0, 1.0), index=hist.index)
    inc[inc.index <= 0] = 0.0
    return inc.cumsum(), "nominal"


def hours(run: Run, include_val_time: bool = False) -> pd.Series:
    hist = run.hist
    if "timing_s/step" in hist.columns:
        sec = hist["timing_s/step"].fillna(0.0)
        if include_val_time and "timing_s/testing" in hist.columns:
            sec = sec + hist["timing_s/testing"].fillna(0.0)
        sec[sec.index <= 0] = 0.0
        return sec.cumsum() / 3600.0
    if "_runtime" in hist.columns:
        h = hist["_runtime"].ffill() / 3600.0
        h[h.index <= 0] = 0.0
        return h
    return pd.Series(np.nan, index=hist.index)


def metric_series(run: Run, spec: str, opts: Options) -> pd.Series:
    """Accuracy (fraction) at the steps where the metric was logged."""
    hist = run.hist
    if spec == "avg":
        cols = [resolve_metric(hist, ds, opts.n) for ds in opts.benchmarks]
        cols = [c for c in cols if c]
        if not cols:
            return pd.Series(dtype=float)
        return hist[cols].dropna(how="any").mean(axis=1)
    col = resolve_metric(hist, spec, opts.n)
    if col is None:
        return pd.Series(dtype=float)
    return hist[col].dropna()


def curve(run: Run, spec: str, opts: Options) -> pd.DataFrame:
    """DataFrame indexed by validation step: acc, bp, hours."""
    acc = metric_series(run, spec, opts)
    bp, _ = backward_passes(run)
    hr = hours(run, opts.include_val_time)
    return pd.DataFrame({"acc": acc, "bp": bp.reindex(acc.index), "hours": hr.reindex(acc.index)})


@dataclass
class Group:
    key: tuple
    runs: list[Run]

    @property
    def model(self) -> str:
        return self.key[0]

    @property
    def method(self) -> str | None:
        return self.key[1]

    @property
    def K(self):
        return self.key[2]

    @property
    def alpha(self):
        return self.key[3]

    def label(self, show_alpha: bool = False) -> str:
        title = METHOD_TITLE.get(self.method, str(self.method))
        if self.method == "grpo" or self.K is None:
            return title
        out = f"{title} K={self.K}"
        if show_alpha:
            out += f" α={self.alpha:g}"
        return out

    def curve(self, spec: str, opts: Options) -> pd.DataFrame:
        """Seed-averaged curve on the validation steps every seed has."""
        curves = [curve(r, spec, opts) for r in self.runs]
        curves = [c for c in curves if len(c)]
        if not curves:
            return pd.DataFrame(columns=["acc", "bp", "hours"])
        if len(curves) == 1:
            return curves[0]
        steps = sorted(set.intersection(*[set(c.index) for c in curves]))
        return sum(c.loc[steps] for c in curves) / len(curves)


def sort_key(key: tuple):
    model, method, K, alpha = key
    mi = MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER)
    return (mi, str(model), METHOD_ORDER.get(method, 9), K or 0, alpha or 0)


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Runs with the same (model, method, K, alpha) form one group; their curves are averaged."""
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.key, []).append(r)
    for key, members in groups.items():
        seeds = [m.meta.get("seed") for m in members]
        if len(members) > 1 and len(set(map(str, seeds))) < len(seeds):
            warnings.warn(f"runs {[m.name for m in members]} share configuration {key} and seed(s) {seeds}: "
                          "averaged as repeats (pass fewer --runs if they are copies of one run)")
    return [Group(k, groups[k]) for k in sorted(groups, key=sort_key)]


def _show_alpha(groups: Sequence[Group]) -> bool:
    for g in groups:
        if g.method in runmeta.DEFAULT_ALPHA and g.alpha is not None and \
                not math.isclose(g.alpha, runmeta.DEFAULT_ALPHA[g.method]):
            return True
    return False


def _base_cols(g: Group, show_alpha: bool) -> dict[str, Any]:
    d = {"Model": g.model, "Method": METHOD_TITLE.get(g.method, str(g.method)),
         "K": "–" if g.method == "grpo" or g.K is None else g.K}
    if show_alpha:
        d["α"] = "–" if g.method == "grpo" or g.alpha is None else g.alpha
    return d


def interp_at(x: np.ndarray, y: np.ndarray, budget: float, rule: str = "linear") -> float:
    """Value of the curve (x ascending budgets, y accuracies) at ``budget``; NaN outside [x0, xn]."""
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    if len(x) == 0:
        return float("nan")
    # a budget that stays equal over several validation points: keep the latest of them
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    keep = np.r_[x[1:] != x[:-1], True]
    x, y = x[keep], y[keep]
    if budget < x[0] - EPS or budget > x[-1] + EPS:
        return float("nan")
    if rule == "previous":
        i = int(np.searchsorted(x, budget + EPS, side="right")) - 1
        return float(y[max(i, 0)])
    if rule != "linear":
        raise ValueError(f"unknown interpolation rule {rule!r}")
    return float(np.interp(budget, x, y))


# ----------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------
def table1(groups: Sequence[Group], opts: Options, at: str = "final") -> pd.DataFrame:
    show_alpha = _show_alpha(groups)
    rows = []
    for g in groups:
        per_seed = []
        for run in g.runs:
            vals = {}
            cols = {ds: resolve_metric(run.hist, ds, opts.n) for ds in opts.benchmarks}
            present = [c for c in cols.values() if c]
            if not present:
                continue
            if at == "best":
                frame = run.hist[present].dropna(how="any")
                frame = frame[frame.index >= 1] if (frame.index >= 1).any() else frame
                if frame.empty:
                    continue
                step = frame.mean(axis=1).idxmax()
                for ds, c in cols.items():
                    vals[ds] = run.hist.at[step, c] if c else np.nan
            else:
                for ds, c in cols.items():
                    s = run.hist[c].dropna() if c else pd.Series(dtype=float)
                    vals[ds] = s.iloc[-1] if len(s) else np.nan
            per_seed.append(vals)
        if not per_seed:
            continue
        row = _base_cols(g, show_alpha)
        row["BP"] = runmeta.backward_passes_per_update(g.method, g.K)
        for ds, title in opts.benchmarks.items():
            v = [p[ds] for p in per_seed]
            row[title] = 100.0 * float(np.mean(v)) if not any(pd.isna(v)) else np.nan
        row["seeds"] = len(per_seed)
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    titles = [t for t in opts.benchmarks.values() if t in df.columns and df[t].notna().any()]
    df = df.drop(columns=[t for t in opts.benchmarks.values() if t in df.columns and t not in titles])
    df["Avg."] = df[titles].mean(axis=1, skipna=False)
    cols = [c for c in df.columns if c != "seeds"] + ["seeds"]
    return df[cols]


def table2(groups: Sequence[Group], spec: str, opts: Options) -> pd.DataFrame:
    show_alpha = _show_alpha(groups)
    rows = []
    curves = {g.key: g.curve(spec, opts) for g in groups}
    for model in dict.fromkeys(g.model for g in groups):
        mg = [g for g in groups if g.model == model]
        ref = next((g for g in mg if g.method == "grpo"), None)
        ref_c = curves[ref.key] if ref else None
        ref_c = ref_c[ref_c.index >= 1] if ref_c is not None else None
        thr = float(ref_c["acc"].max()) if ref_c is not None and len(ref_c) else float("nan")
        ref_match = _first_reach(ref_c, thr) if ref_c is not None else None
        for g in mg:
            c = curves[g.key]
            c = c[c.index >= 1]
            if c.empty:
                continue
            row = _base_cols(g, show_alpha)
            row["Peak Acc."] = float(c["acc"].max())
            hit = _first_reach(c, thr)
            for label, field_, ratio in (("Steps to match GRPO", "step", "Step speedup"),
                                         ("Hours to match GRPO", "hours", "Time speedup"),
                                         ("BPs to match GRPO", "bp", "BP speedup")):
                val = hit[field_] if hit is not None else np.nan
                ref_val = ref_match[field_] if ref_match is not None else np.nan
                row[label] = val
                row[ratio] = (ref_val / val) if (hit is not None and ref_match is not None and val) else np.nan
            row["reached"] = hit is not None
            row["threshold"] = thr
            rows.append(row)
    return pd.DataFrame(rows)


def _first_reach(c: pd.DataFrame, thr: float) -> dict | None:
    if c is None or c.empty or not np.isfinite(thr):
        return None
    hit = c[c["acc"] >= thr - EPS]
    if hit.empty:
        return None
    step = int(hit.index[0])
    return {"step": float(step), "hours": float(hit["hours"].iloc[0]), "bp": float(hit["bp"].iloc[0])}


def iso_table(groups: Sequence[Group], opts: Options, axis: str, budgets: Sequence[float] | None) -> pd.DataFrame:
    """Long form: one row per (run group, budget) with a column per benchmark and Avg. (percent)."""
    show_alpha = _show_alpha(groups)
    rows = []
    for model in dict.fromkeys(g.model for g in groups):
        mg = [g for g in groups if g.model == model]
        ref = next((g for g in mg if g.method == "grpo"), None)
        if budgets:
            bud = [float(b) for b in budgets]
        else:
            if ref is None:
                continue
            rc = pd.concat([ref.curve(ds, opts) for ds in opts.benchmarks]) if opts.benchmarks else None
            if rc is None or rc.empty or rc[axis].dropna().empty:
                continue
            last_step = rc.index.max()
            bud = [float(rc.loc[[last_step], axis].iloc[0])]
        for g in mg:
            ccurves = {ds: g.curve(ds, opts) for ds in opts.benchmarks}
            if all(c.empty for c in ccurves.values()):
                continue
            for b in bud:
                row = _base_cols(g, show_alpha)
                row["budget"] = b
                for ds, title in opts.benchmarks.items():
                    c = ccurves[ds]
                    row[title] = 100.0 * interp_at(c[axis].to_numpy(float), c["acc"].to_numpy(float), b,
                                                   opts.interp) if not c.empty else np.nan
                rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    titles = [t for t in opts.benchmarks.values() if t in df.columns and df[t].notna().any()]
    df = df.drop(columns=[t for t in opts.benchmarks.values() if t in df.columns and t not in titles])
    df["Avg."] = df[titles].mean(axis=1, skipna=False)
    return df


# ----------------------------------------------------------------------------------------------
# formatting
# ----------------------------------------------------------------------------------------------
def _fmt(v: Any, kind: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if kind == "pct":
            return f"{v:.2f}"
        if kind == "acc":
            return f"{v:.4f}"
        if kind == "hours":
            return f"{v:.2f} h"
        if kind == "ratio":
            return f"{v:.2f}"
        if kind == "count":
            return f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"
        return f"{v:g}"
    return str(v)


def to_markdown(df: pd.DataFrame, kinds: Mapping[str, str] | None = None, blank_repeats: Sequence[str] = ("Model",),
                na_text: Mapping[str, str] | None = None) -> str:
    if df.empty:
        return "_(no data)_\n"
    kinds = kinds or {}
    na_text = na_text or {}
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    prev: dict[str, Any] = {}
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if c in blank_repeats and prev.get(c) == v:
                cells.append("")
            elif c in na_text and (v is None or (isinstance(v, float) and math.isnan(v))):
                cells.append(na_text[c])
            else:
                cells.append(_fmt(v, kinds.get(c, "")))
        for c in blank_repeats:
            prev[c] = r[c] if c in r else None
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def slug(spec: str) -> str:
    s = spec.replace("val-core/", "").replace("/acc/", "_").replace("@", "")
    return re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_") or "metric"


# ----------------------------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------------------------
def plot_metric(groups: Sequence[Group], spec: str, opts: Options, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    show_alpha = _show_alpha(groups)
    models = list(dict.fromkeys(g.model for g in groups))
    curves = {g.key: g.curve(spec, opts) for g in groups}
    written = []
    for axis, xlabel in (("step", "training steps"), ("bp", "backward passes"), ("hours", "wall-clock hours")):
        ncol = min(2, len(models))
        nrow = math.ceil(len(models) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(6 * ncol, 4 * nrow), squeeze=False)
        for ax, model in zip(axes.flat, models):
            ref_peak = None
            for g in (g for g in groups if g.model == model):
                c = curves[g.key]
                if c.empty:
                    continue
                x = c.index.to_numpy(float) if axis == "step" else c[axis].to_numpy(float)
                style = "-" if g.method == "gxpo" else ("--" if g.method == "sfpo" else "-")
                lw = 2.2 if g.method == "grpo" else 1.4
                ax.plot(x, 100.0 * c["acc"].to_numpy(float), style, marker="o", ms=2.5, lw=lw,
                        label=g.label(show_alpha), color="black" if g.method == "grpo" else None)
                if g.method == "grpo":
                    cc = c[c.index >= 1]
                    if len(cc):
                        ref_peak = 100.0 * float(cc["acc"].max())
            if ref_peak is not None:
                ax.axhline(ref_peak, color="gray", ls=":", lw=1, label="GRPO peak")
            ax.set_title(model)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{spec} (%)")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(models):]:
            ax.set_visible(False)
        fig.tight_layout()
        path = out_dir / f"{slug(spec)}_vs_{axis}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


# ----------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------
T2_KINDS = {"Peak Acc.": "acc", "Steps to match GRPO": "count", "Hours to match GRPO": "hours",
            "BPs to match GRPO": "count", "Step speedup": "ratio", "Time speedup": "ratio",
            "BP speedup": "ratio", "threshold": "acc"}
T2_NA = {"Steps to match GRPO": "n/r", "Hours to match GRPO": "n/r", "BPs to match GRPO": "n/r"}


def _iso_markdown(df: pd.DataFrame, opts: Options, axis: str) -> str:
    if df.empty:
        return "_(no data: no GRPO run to take the budget from, or no benchmark metrics)_\n"
    parts = []
    titles = [t for t in list(opts.benchmarks.values()) + ["Avg."] if t in df.columns]
    for model in dict.fromkeys(df["Model"]):
        sub = df[df["Model"] == model]
        label_cols = [c for c in ("Method", "K", "α") if c in sub.columns]
        wide = None
        for b in dict.fromkeys(sub["budget"]):
            part = sub[sub["budget"] == b][label_cols + titles].copy()
            tag = f"BP={b:g}" if axis == "bp" else f"{b:g}h"
            part = part.rename(columns={t: f"{tag} {t}" for t in titles})
            part = part.reset_index(drop=True)
            wide = part if wide is None else pd.concat([wide, part.drop(columns=label_cols)], axis=1)
        kinds = {c: "pct" for c in wide.columns if c not in label_cols}
        parts.append(f"**{model}**\n\n" + to_markdown(wide, kinds, blank_repeats=("Method",)))
    return "\n".join(parts)


def build_report(run_paths: Sequence[str], out: str | os.PathLike, metrics: Sequence[str] | None = None,
                 opts: Options | None = None, table1_at: str = "final", iso_bp: Sequence[float] | None = None,
                 iso_hours: Sequence[float] | None = None, plots: bool = True,
                 seed_key: str = runmeta.DEFAULT_SEED_KEY) -> dict[str, Any]:
    opts = opts or Options()
    metrics = list(metrics or DEFAULT_METRICS)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(run_paths, seed_key)
    if not runs:
        raise SystemExit(f"launch.report: no runs with metrics found under {', '.join(map(str, run_paths))}")
    groups = group_runs(runs)
    result: dict[str, Any] = {"runs": runs, "groups": groups, "files": []}

    inv = []
    for r in runs:
        bp, src = backward_passes(r)
        hr = hours(r, opts.include_val_time)
        inv.append({"run": r.name, "format": r.kind, "model": r.meta.get("model_display"),
                    "method": r.meta.get("method"), "K": r.meta.get("K"), "alpha": r.meta.get("alpha"),
                    "seed": r.meta.get("seed"), "last_step": int(r.hist.index.max()) if len(r.hist) else None,
                    "backward_passes": float(bp.iloc[-1]) if len(bp) else None, "bp_source": src,
                    "hours": float(hr.iloc[-1]) if len(hr) else None,
                    "meta_from": "; ".join(f"{k}: {v}" for k, v in r.meta_sources.items()),
                    "paths": " ".join(r.paths)})
    inv_df = pd.DataFrame(inv)
    inv_df.to_csv(out / "runs.csv", index=False)
    result["files"].append(out / "runs.csv")

    md = ["# GXPO report", "", f"Runs: {len(runs)} in {len(groups)} configuration(s). "
          f"Accuracy metrics: `val-core/<data_source>/acc/mean@N` (sampled pass@1).", ""]

    t1 = table1(groups, opts, table1_at)
    result["table1"] = t1
    t1.to_csv(out / "table1.csv", index=False)
    kinds1 = {t: "pct" for t in list(opts.benchmarks.values()) + ["Avg."]}
    t1_md = to_markdown(t1, kinds1)
    (out / "table1.md").write_text(t1_md)
    result["files"] += [out / "table1.csv", out / "table1.md"]
    md += [f"## Table 1: average sampled pass@1 (%), {table1_at} validation", "", t1_md]

    result["table2"] = {}
    for spec in metrics:
        t2 = table2(groups, spec, opts)
        result["table2"][spec] = t2
        name = f"table2_{slug(spec)}"
        t2.to_csv(out / f"{name}.csv", index=False)
        shown = t2.drop(columns=[c for c in ("reached", "threshold") if c in t2.columns])
        t2_md = to_markdown(shown, T2_KINDS, na_text=T2_NA)
        (out / f"{name}.md").write_text(t2_md)
        result["files"] += [out / f"{name}.csv", out / f"{name}.md"]
        md += [f"## Table 2: efficiency to reach GRPO's peak — `{spec}`", "", t2_md]

    for axis, budgets, fname, title in (("bp", iso_bp, "iso_bp", "Iso-backward-pass"),
                                        ("hours", iso_hours, "iso_hours", "Iso-wall-clock")):
        df = iso_table(groups, opts, axis, budgets)
        result[fname] = df
        df.to_csv(out / f"{fname}.csv", index=False)
        text = _iso_markdown(df, opts, axis)
        (out / f"{fname}.md").write_text(text)
        result["files"] += [out / f"{fname}.csv", out / f"{fname}.md"]
        which = "given budgets" if budgets else "GRPO's final budget per model"
        md += [f"## {title} comparison (%), {which}, interpolation: {opts.interp}", "", text]

    if plots:
        pdir = out / "plots"
        pdir.mkdir(exist_ok=True)
        for spec in metrics:
            result["files"] += plot_metric(groups, spec, opts, pdir)
        md += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in result["files"] if p.suffix == ".png"]

    md += ["", "## Runs", "", to_markdown(inv_df.drop(columns=["paths", "meta_from"]), {"hours": "hours"}, blank_repeats=())]
    (out / "report.md").write_text("\n".join(md) + "\n")
    result["files"].append(out / "report.md")
    return result


def _floats(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def parse_benchmarks(text: str | None) -> dict[str, str]:
    if not text:
        return dict(BENCHMARKS)
    out = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        ds, _, title = item.partition("=")
        out[ds.strip()] = title.strip() or BENCHMARKS.get(ds.strip(), ds.strip())
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.report", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="run log files or directories (searched recursively)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--metric", nargs="+", action="extend", default=None,
                   help="Table 2 / plot metrics: full names, names without @N, data sources, or 'avg' "
                        f"(default: {' '.join(DEFAULT_METRICS)})")
    p.add_argument("--benchmarks", default=None,
                   help="Table 1 columns as data_source=Title,... (default: "
                        + ",".join(f"{k}={v}" for k, v in BENCHMARKS.items()) + ")")
    p.add_argument("--n", type=int, default=None, help="use mean@N with this N (default: the largest logged)")
    p.add_argument("--table1-at", choices=("final", "best"), default="final")
    p.add_argument("--iso-bp", type=_floats, default=None, help="backward-pass budgets, e.g. 108,204,300")
    p.add_argument("--iso-hours", type=_floats, default=None, help="wall-clock budgets in hours, e.g. 4,8,12")
    p.add_argument("--interp", choices=("linear", "previous"), default="linear")
    p.add_argument("--include-val-time", action="store_true", help="count timing_s/testing in the hours")
    p.add_argument("--seed-key", default=runmeta.DEFAULT_SEED_KEY)
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    opts = Options(benchmarks=parse_benchmarks(args.benchmarks), n=args.n,
                   include_val_time=args.include_val_time, interp=args.interp)
    try:
        res = build_report(args.runs, args.out, args.metric, opts, args.table1_at, args.iso_bp, args.iso_hours,
                           plots=not args.no_plots, seed_key=args.seed_key)
    except FileNotFoundError as exc:
        p.error(str(exc))
    print(f"{len(res['runs'])} run(s), {len(res['groups'])} configuration(s); wrote:")
    for f in res["files"]:
        print(f"  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
