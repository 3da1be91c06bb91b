"""Tables 1 and 2 and the iso-budget comparisons as typed rows (dataclasses), and as DataFrames
(one column per field, the layout of the paper's tables) for CSV/markdown output."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from launch import runmeta
from launch.report.derive import EPS, Group, Options, _base_cols, _show_alpha, interp_at, resolve_metric


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


