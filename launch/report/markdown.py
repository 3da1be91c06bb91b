"""Markdown rendering of the report's tables."""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from launch.report.derive import Options


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


