"""The report driver: runs -> tables, markdown, CSV and plots in one output directory."""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from launch import runmeta
from launch.report.derive import Options, backward_passes, group_runs, hours
from launch.report.markdown import T2_KINDS, T2_NA, _iso_markdown, slug, to_markdown
from launch.report.metadata import Run, load_runs
from launch.report.plots import plot_metric
from launch.report.tables import iso_table, table1, table2

DEFAULT_METRICS = ["math500", "avg"]

TABLE1_NOTES = """\
- Table 1 takes every benchmark of a run from ONE evaluation step, shown in the Step column: the
  last step at which all its benchmarks were evaluated (`--table1-at final`) or the step with the
  best mean over them (`--table1-at best`; chosen on the same numbers it reports, so optimistic).
  Seeds are averaged; "stopped early" marks a run whose last logged step is below its configured
  `trainer.total_training_steps` (column `complete` of table1.csv; empty when no config says).
- The paper does not say which step its Table 1 reports: its Llama3.2-3B GRPO row (Math-500 33.46,
  GSM8K 67.04, Minerva 10.98) matches neither its step-300 numbers (Table 3 at BP=300, GRPO's
  300 steps: 33.85, 66.84, 9.77) nor its peak (Table 2: Math-500 peak 34.10). Compare with it
  knowing that either choice here may differ from the paper's.
- pass@1 is verl's `mean@N` (mean accuracy over the N samples per prompt); pass@k for k > 1 is
  the unbiased estimator 1 - C(n-c, k)/C(n, k) logged as `val-core/<ds>/acc/pass@<k>`, not verl's
  bootstrap `best@k`.
- Extra rows: CAPO+<rule> (CAPO's token mask; no extra backward pass) and NExt (LoRA GRPO with
  NExt's predict-extend). Each row is measured against the same model's plain GRPO with the same
  LoRA rank (column `vs` of Table 2): NExt against LoRA GRPO. Hours are the sum of
  `timing_s/step`, which includes NExt's predictor fits (their own total: `NExt predictor s`)."""


def largest_pass_k(runs: Sequence[Run], opts: Options) -> int | None:
    """The largest k > 1 for which some run logged ``val-core/<benchmark>/acc/pass@<k>``."""
    ks = set()
    for r in runs:
        for col in r.hist.columns:
            m = re.fullmatch(r"val-core/(.+)/acc/pass@(\d+)", col)
            if m and m.group(1) in opts.benchmarks and int(m.group(2)) > 1:
                ks.add(int(m.group(2)))
    return max(ks) if ks else None


AVG_INCOMPLETE = "incomplete"


def _write_table1(df: pd.DataFrame, opts: Options, stem: Path, files: list) -> str:
    df.to_csv(stem.with_suffix(".csv"), index=False)
    kinds = {t: "pct" for t in list(opts.benchmarks.values()) + ["Avg."]}
    text = to_markdown(df.drop(columns=[c for c in ("complete",) if c in df.columns]), kinds,
                       na_text={"Avg.": AVG_INCOMPLETE})
    if "Avg." in df.columns and df["Avg."].isna().any():
        text += (f"\n_Avg. is the mean over exactly these {len(opts.benchmarks)} benchmarks: "
                 f"{', '.join(opts.benchmarks.values())}; \"{AVG_INCOMPLETE}\" where a row did not log all of them._\n")
    stem.with_suffix(".md").write_text(text)
    files += [stem.with_suffix(".csv"), stem.with_suffix(".md")]
    return text


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
                    "accel": r.meta.get("accel"), "lora": r.meta.get("lora") or 0,
                    "seed": r.meta.get("seed"), "last_step": r.last_step, "total_steps": r.total_steps,
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
    t1_md = _write_table1(t1, opts, out / "table1", result["files"])
    md += [f"## Table 1: average sampled pass@1 (%), {table1_at} validation step", "", t1_md]

    # the unbiased pass@k of the gxpo_sync trainer (val-core/<ds>/acc/pass@<k>), largest k logged
    result["table1_pass"] = {}
    k = largest_pass_k(runs, opts)
    if k is not None:
        popts = replace(opts, stat=f"pass@{k}")
        tk = table1(groups, popts, table1_at)
        result["table1_pass"][k] = tk
        tk_md = _write_table1(tk, popts, out / f"table1_pass{k}", result["files"])
        md += [f"## Table 1, pass@{k} (%, unbiased estimator), {table1_at} validation step", "", tk_md]

    md += ["## Notes", "", *TABLE1_NOTES.format(at=table1_at).splitlines(), ""]

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


