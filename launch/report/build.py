"""The report driver: runs -> tables, markdown, CSV and plots in one output directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from launch import runmeta
from launch.report.derive import Options, backward_passes, group_runs, hours
from launch.report.markdown import T2_KINDS, T2_NA, _iso_markdown, slug, to_markdown
from launch.report.metadata import load_runs
from launch.report.plots import plot_metric
from launch.report.tables import iso_table, table1, table2

DEFAULT_METRICS = ["math500", "avg"]


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


