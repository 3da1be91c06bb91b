"""Reading run logs: verl's file logger / simple JSONL files, wandb history files and wandb's binary
``run-<id>.wandb`` log, and discovering which files belong to which run (see the package docstring
for the formats)."""

from __future__ import annotations

import json
import os
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from recipe.gxpo import run_layout

STEP_KEYS = run_layout.STEP_KEYS


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
    """Rows ``{"__step": s, metric: value}`` of a verl file-logger / simple / wandb-history JSONL
    (lines decoded by :func:`recipe.gxpo.run_layout.read_metrics_file`, the project's one reader)."""
    records, bad = run_layout.read_metrics_file(str(path))
    if bad:
        warnings.warn(f"{path}: skipped {bad} malformed line(s)")  # e.g. the last line of a killed run
    return [row for row in (_row(step, data) for step, data in records) if row is not None]


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

    from google.protobuf.message import DecodeError

    rows: list[dict[str, float]] = []
    config: dict[str, Any] = {}
    name = None
    undecodable = unparsable = 0
    for payload in iter_wandb_records(path):
        rec = pb.Record()
        try:
            rec.ParseFromString(payload)
        except DecodeError:  # e.g. the torn last record of a killed run
            undecodable += 1
            continue
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            values = {}
            for item in rec.history.item:
                try:
                    values[_item_key(item)] = json.loads(item.value_json)
                except (ValueError, TypeError):
                    unparsable += 1
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
                    unparsable += 1
    if undecodable or unparsable:
        warnings.warn(f"{path}: skipped {undecodable} undecodable record(s) and {unparsable} value(s) "
                      "that are not JSON")
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
            segments = [f for f in jsonls if run_layout.is_metrics_file(f)]
            others = [f for f in jsonls if not run_layout.is_metrics_file(f)]
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



def _frame(rows: list[dict[str, float]]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame(index=pd.Index([], name="step", dtype=int))
    df = pd.DataFrame(rows)
    # later rows win for the same step (resumed runs re-log steps); groupby.last keeps the last non-null
    df = df.groupby("__step", sort=True).last()
    df.index = df.index.astype(int)
    df.index.name = "step"
    return df


