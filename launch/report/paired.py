"""The per-seed comparison of ``launch.compare``: rows (update rules / accelerators) run on the same
seeds, each measured against its GRPO reference row with the same seed.

A thin layer over :mod:`launch.report`: each run directory ``<out>/<row>/seed<N>/`` is read as one
:class:`~launch.report.metadata.Run` by :func:`~launch.report.metadata.load_runs` (its metrics
segments, through the project's one metrics reader, and its ``meta.json`` / Hydra record), its
validation curve is :func:`launch.report.derive.curve` (accuracy, cumulative backward passes, training
hours = sum of ``timing_s/step``, validation excluded), the statistics are
:func:`~launch.report.derive.mean_ci95` and :func:`~launch.report.derive.first_reach`, and the plot is
drawn by :func:`launch.report.plots.draw_panel` (one :class:`~launch.report.derive.Group` per row,
named after it). The metric is the first ``val-core/<data source>/acc/mean@<n>`` column (name order)
of the first run that logged one; every run is read at it. What this module adds: the rows and seeds,
the pairing by seed, and the extras read from a run's history (the last logged
``<rule>/shutoff_update``, NExt's ``next/predictor_seconds_total`` and ``next/events``, CAPO's
``capo/masked_frac``). It writes to the output directory:

* ``summary.md`` / ``summary.json``: per row, mean +- 95% t-interval over seeds of the final and the
  peak validation accuracy; the steps, backward passes (BP) and training seconds (hours x 3600) at
  which the run first reached its reference's peak of the same seed -- per seed, and the mean over
  the seeds that reached it, with "k/N reached" (a run that never reached it is counted as not
  reached, not dropped silently); the GXPO/SFPO shutoff update per seed; a paired comparison with the
  reference (per-seed differences of final and peak accuracy, their mean +- 95% interval, and in how
  many seeds the row beat it); NExt's predictor seconds and CAPO's masked-token fraction;
  ``summary.json`` also has every run's curve (step, acc, bp, seconds) and extras;
* ``compare.png``: one figure, three panels (against training steps, BP and training hours): the
  mean validation curve per row (band: min..max over seeds), on the evaluation steps all its seeds
  have (x of a point: the mean over seeds at that step).

Nothing is asserted: it reports. ``python -m launch.report --runs <out>`` reads the same run
directories for the paper's tables and iso-budget views.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from launch.report import derive
from launch.report.derive import Group, Options, first_reach, mean_ci95
from launch.report.metadata import Run, load_runs
from launch.report.plots import AXES, draw_panel
from recipe.gxpo import run_layout
from recipe.gxpo.compare import ROW_RULE, reference_of, rule_of


# ---------------------------------------------------------------------------------------------
# reading: one Run per run directory, its curve and extras
# ---------------------------------------------------------------------------------------------


def read_run(run_dir: Path) -> Optional[Run]:
    """The run of ``run_dir`` (its metrics segments), or None when it has none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    for run in load_runs([run_dir]):
        files = [Path(p) for p in run.paths]
        if run.kind == "file" and files and all(f.parent == run_dir and run_layout.is_metrics_file(f.name)
                                                for f in files):
            return run
    return None


def read_rows(out: Path, rows: list[str], seeds: list[int]) -> dict[str, dict[int, Run]]:
    """runs[row][seed] for the (row, seed) directories under ``out`` that logged metrics."""
    runs: dict[str, dict[int, Run]] = {}
    for row in rows:
        runs[row] = {}
        for s in seeds:
            run = read_run(Path(out) / row / f"seed{s}")
            if run is not None:
                runs[row][s] = run
    return runs


def val_key(runs: dict[str, dict[int, Run]]) -> Optional[str]:
    """The first ``val-core/*/acc/mean@*`` column (name order) of the first run that has one."""
    for by_seed in runs.values():
        for run in by_seed.values():
            keys = sorted(c for c in run.hist.columns if c.startswith("val-core/") and "/acc/mean@" in c)
            if keys:
                return keys[0]
    return None


def run_curve(run: Run, metric: Optional[str]) -> pd.DataFrame:
    """:func:`launch.report.derive.curve` of ``metric`` (indexed by validation step: acc, bp, hours)
    plus ``seconds`` (hours x 3600: training seconds, validation excluded)."""
    if metric is None:
        return pd.DataFrame(columns=["acc", "bp", "hours", "seconds"])
    c = derive.curve(run, metric, Options())
    c["seconds"] = c["hours"] * 3600.0
    return c


def _finite(run: Run, col: str) -> pd.Series:
    if col not in run.hist.columns:
        return pd.Series(dtype=float)
    v = run.hist[col].dropna()
    return v[np.isfinite(v.to_numpy(float))]


def run_extras(run: Run, rule: str) -> dict:
    """``shutoff`` (the last logged ``<rule>/shutoff_update``; None when not logged or negative),
    NExt's ``next_seconds`` / ``next_events`` (last logged) and CAPO's ``capo_masked`` (mean over the
    steps); None where the run did not log them."""
    def last(col):
        v = _finite(run, col)
        return float(v.iloc[-1]) if len(v) else None

    shut = last(f"{rule}/shutoff_update")
    masked = _finite(run, "capo/masked_frac")
    return {"shutoff": int(shut) if shut is not None and shut >= 0 else None,
            "next_seconds": last("next/predictor_seconds_total"), "next_events": last("next/events"),
            "capo_masked": float(masked.mean()) if len(masked) else None}


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------


def _reach(c: pd.DataFrame, target: Optional[float]) -> Optional[dict]:
    """Step, BP and training seconds of the first point of ``c`` at ``target`` (derive.first_reach)."""
    hit = first_reach(c, target) if target is not None else None
    if hit is None:
        return None
    return {"step": int(hit["step"]), "bp": hit["bp"], "seconds": hit["hours"] * 3600.0}


def summarize(runs: dict[str, dict[int, Run]], metric: Optional[str]) -> dict:
    """runs[row][seed] -> per-row statistics (see the module docstring). Needs a ``grpo`` row; a row
    with a REFERENCE that ran (``next`` -> ``grpo_lora``) is measured against that row instead."""
    curves = {row: {s: run_curve(r, metric) for s, r in by_seed.items()} for row, by_seed in runs.items()}
    acc = {row: {s: c["acc"].to_numpy(float) for s, c in by_seed.items()} for row, by_seed in curves.items()}
    out = {}
    for row, by_seed in curves.items():
        ref = reference_of(row, curves)
        grpo = acc[ref]
        seeds = sorted(by_seed)
        a = acc[row]
        final = {s: float(a[s][-1]) if len(a[s]) else None for s in seeds}
        peak = {s: float(a[s].max()) if len(a[s]) else None for s in seeds}
        reach = {s: _reach(by_seed[s], float(grpo[s].max()) if s in grpo and len(grpo[s]) else None) for s in seeds}
        reached = [r for r in reach.values() if r is not None]
        paired_final = [final[s] - float(grpo[s][-1]) for s in seeds if s in grpo and len(grpo[s]) and final[s] is not None]
        paired_peak = [peak[s] - float(grpo[s].max()) for s in seeds if s in grpo and len(grpo[s]) and peak[s] is not None]
        extras = {s: run_extras(runs[row][s], rule_of(row)) for s in seeds}
        out[row] = {
            "seeds": seeds, "reference": ref,
            "step0": {s: float(a[s][0]) if len(a[s]) and by_seed[s].index[0] == 0 else None for s in seeds},
            "final": final, "final_mean_ci": mean_ci95(list(final.values())),
            "peak": peak, "peak_mean_ci": mean_ci95(list(peak.values())),
            "reach": reach, "reached": f"{len(reached)}/{len(seeds)}",
            "reach_mean": {k: (sum(r[k] for r in reached) / len(reached) if reached else None) for k in ("step", "bp", "seconds")},
            "shutoff": {s: extras[s]["shutoff"] for s in seeds},
            "next_seconds": {s: extras[s]["next_seconds"] for s in seeds if extras[s]["next_seconds"] is not None},
            "next_events_mean": (sum(extras[s]["next_events"] or 0 for s in seeds) / len(seeds)) if seeds else 0.0,
            "capo_masked": {s: extras[s]["capo_masked"] for s in seeds if extras[s]["capo_masked"] is not None},
            "paired_final_diff": mean_ci95(paired_final), "paired_peak_diff": mean_ci95(paired_peak),
            "wins_final": f"{sum(d > 0 for d in paired_final)}/{len(paired_final)}",
            "ties_final": sum(d == 0 for d in paired_final),
        }
    return out


def _pm(mc: tuple[float, float], digits: int = 3) -> str:
    m, h = mc
    if m != m:
        return "-"
    return f"{m:.{digits}f}" + ("" if h != h else f" ± {h:.{digits}f}")


def _num(v, digits=0) -> str:
    return "not reached" if v is None else f"{v:.{digits}f}"


def markdown(stats: dict, metric: str, steps: int, wall: dict) -> str:
    n = max(len(s["seeds"]) for s in stats.values())
    lines = [
        f"Validation metric `{metric}`, {steps} training steps, {n} seeds; ± is the 95% Student-t interval over seeds.",
        "\"to GRPO peak\": first evaluation at which the run reaches the peak accuracy of its GRPO reference (column vs) "
        "with the same seed (mean over the seeds that reached it; k/N = how many did). Seconds: training time (sum of "
        "timing_s/step; NExt's predictor fits run inside the step and are counted, their total in the last column; "
        "for CAPO the last column is the fraction of response tokens its mask removed, mean over steps and seeds).",
        "",
        "| row | vs | step-0 acc | final acc | peak acc | reached GRPO peak | steps to it | BP to it | seconds to it "
        "| shutoff update (per seed) | extra cost |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row, s in stats.items():
        step0 = [v for v in s["step0"].values() if v is not None]
        st0 = f"{sum(step0) / len(step0):.3f}" if step0 else "-"
        rm = s["reach_mean"]
        shut = (", ".join("never" if s["shutoff"][k] is None else str(s["shutoff"][k]) for k in s["seeds"])
                if ROW_RULE.get(row) in ("gxpo", "sfpo") else "-")
        extra = "-"
        if s.get("next_seconds"):
            v = list(s["next_seconds"].values())
            extra = f"NExt predictor {sum(v) / len(v):.1f} s, {s['next_events_mean']:.1f} events"
        elif s.get("capo_masked"):
            v = list(s["capo_masked"].values())
            extra = f"CAPO masked {100 * sum(v) / len(v):.0f}% of tokens"
        lines.append(
            f"| {row} | {s['reference'] if row != 'grpo' else '-'} | {st0} | {_pm(s['final_mean_ci'])} | "
            f"{_pm(s['peak_mean_ci'])} | {s['reached']} | "
            f"{_num(rm['step'], 1)} | {_num(rm['bp'], 0)} | {_num(rm['seconds'], 0)} | {shut} | {extra} |"
        )
    lines += ["", "Per seed -- steps / BP / seconds to the reference's peak:", "", "| row | " + " | ".join(f"seed {k}" for k in stats["grpo"]["seeds"]) + " |",
              "|---|" + "---|" * len(stats["grpo"]["seeds"])]
    for row, s in stats.items():
        cells = []
        for k in stats["grpo"]["seeds"]:
            r = s["reach"].get(k)
            cells.append("not reached" if r is None else f"{r['step']} / {r['bp']:.0f} / {r['seconds']:.0f}s")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", "Paired with the GRPO reference (same seed): mean difference ± 95% interval, and seeds where the row's final accuracy is higher:", "",
              "| row | vs | final acc − reference | peak acc − reference | final higher than reference |", "|---|---|---|---|---|"]
    for row, s in stats.items():
        if row == "grpo":
            continue
        lines.append(f"| {row} | {s['reference']} | {_pm(s['paired_final_diff'])} | {_pm(s['paired_peak_diff'])} | {s['wins_final']} (ties {s['ties_final']}) |")
    if wall:
        total = sum(wall.values())
        lines += ["", f"Wall-clock of the runs (each a full main job: Ray start, training, validation): total {total / 60:.1f} min; "
                  + ", ".join(f"{k} {v / 60:.1f} min" for k, v in wall.items())]
    return "\n".join(lines) + "\n"


def groups_of(runs: dict[str, dict[int, Run]]) -> list[Group]:
    """One :class:`~launch.report.derive.Group` per row that has runs (its seeds), named after the row
    (rows such as ``grpo`` and ``grpo_lr1e-3`` share a configuration key); ``grpo`` first, so the
    plots draw it as the reference."""
    rows = sorted((r for r in runs if runs[r]), key=lambda r: r != "grpo")
    return [Group(next(iter(runs[r].values())).key, [runs[r][s] for s in sorted(runs[r])], name=r) for r in rows]


def plot(runs: dict[str, dict[int, Run]], path: Path, metric: str) -> None:
    """``compare.png``: the rows' curves against steps, BP and training hours, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = groups_of(runs)
    fig, axes = plt.subplots(1, len(AXES), figsize=(16, 4.5))
    for i, (ax, (axis, _)) in enumerate(zip(axes, AXES)):
        draw_panel(ax, groups, metric, Options(), axis)
        if i and ax.get_legend() is not None:
            ax.get_legend().remove()  # one legend: the first panel's
    fig.suptitle("Embedded task: mean over seeds (band: min..max)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _curve_record(run: Run, row: str, metric: Optional[str]) -> dict:
    c = run_curve(run, metric)
    return {"step": [int(s) for s in c.index], **{k: [float(v) for v in c[k]] for k in ("acc", "bp", "seconds")},
            "metric": metric, **run_extras(run, rule_of(row))}


def report(out: Path, rows: list[str], seeds: list[int], steps: int) -> str:
    runs = read_rows(out, rows, seeds)
    if not runs.get("grpo"):
        raise SystemExit(f"[compare] no GRPO metrics under {out / 'grpo'}: GRPO is the reference row")
    wall: dict[str, float] = {}
    for row, by_seed in runs.items():
        for s in by_seed:
            w = Path(out) / row / f"seed{s}" / "wall_s.txt"
            if w.exists():
                wall[f"{row}/s{s}"] = float(w.read_text())
    metric = val_key(runs)
    stats = summarize(runs, metric)
    md = markdown(stats, metric or "?", steps, wall)
    curves = {row: {s: _curve_record(r, row, metric) for s, r in by_seed.items()} for row, by_seed in runs.items()}
    (Path(out) / "summary.md").write_text(md)
    (Path(out) / "summary.json").write_text(json.dumps({"metric": metric, "steps": steps, "stats": stats, "curves": curves,
                                                        "wall_s": wall}, indent=1, default=str))
    plot(runs, Path(out) / "compare.png", metric or "?")
    return md
