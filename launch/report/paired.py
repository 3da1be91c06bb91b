"""The per-seed comparison of ``launch.compare``: rows (update rules / accelerators) run on the same
seeds, each measured against its GRPO reference row with the same seed.

Reads each run directory through the project's one metrics reader (:func:`recipe.gxpo.run_layout.read_metrics`)
and writes to the output directory:

* ``summary.md`` / ``summary.json``: per row, mean +- 95% t-interval over seeds of the final and the
  peak validation accuracy; the steps, backward passes (BP) and training seconds (sum of
  ``timing_s/step``, validation excluded) at which the run first reached its reference's peak of the
  same seed -- per seed, and the mean over the seeds that reached it, with "k/N reached" (a run that
  never reached it is counted as not reached, not dropped silently); the GXPO/SFPO shutoff update per
  seed; a paired comparison with the reference (per-seed differences of final and peak accuracy,
  their mean +- 95% interval, and in how many seeds the row beat it); NExt's predictor seconds and
  CAPO's masked-token fraction;
* ``compare.png``: mean validation curve per row (band: min..max over seeds) against steps, BP and
  training seconds (x of a point: the mean over seeds at that evaluation step).

Nothing is asserted: it reports. ``python -m launch.report --runs <out>`` reads the same run
directories for the paper's tables and iso-budget views.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

from recipe.gxpo import run_layout
from recipe.gxpo.compare import ROW_RULE, reference_of, rule_of

# two-sided 95% Student-t quantiles t_{0.975, df}
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}



# ---------------------------------------------------------------------------------------------
# curves of one run
# ---------------------------------------------------------------------------------------------


def _finite(v) -> Optional[float]:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def val_key(steps: dict[int, dict]) -> Optional[str]:
    keys = sorted({k for d in steps.values() for k in d if k.startswith("val-core/") and "/acc/mean@" in k})
    return keys[0] if keys else None


def run_curve(steps: dict[int, dict], rule: str, metric: Optional[str] = None) -> dict:
    """Validation points of one run: ``{"step": [...], "acc": [...], "bp": [...], "seconds": [...]}``
    plus ``shutoff`` (the last logged ``<rule>/shutoff_update``; None when not logged or negative),
    NExt's predictor total and events, and CAPO's masked token fraction (mean over the steps)."""
    metric = metric or val_key(steps)
    out = {"step": [], "acc": [], "bp": [], "seconds": [], "shutoff": None, "metric": metric,
           "next_seconds": None, "next_events": None, "capo_masked": None}
    bp, seconds = 0.0, 0.0
    masked = [m for m in (_finite(d.get("capo/masked_frac")) for d in steps.values()) if m is not None]
    if masked:
        out["capo_masked"] = sum(masked) / len(masked)
    for step, d in steps.items():
        seconds += _finite(d.get("timing_s/step")) or 0.0
        b = _finite(d.get(f"{rule}/backward_passes"))
        bp = b if b is not None else bp
        for key, name in (("next/predictor_seconds_total", "next_seconds"), ("next/events", "next_events")):
            v = _finite(d.get(key))
            if v is not None:
                out[name] = v
        s = _finite(d.get(f"{rule}/shutoff_update"))
        if s is not None:
            out["shutoff"] = int(s) if s >= 0 else None
        acc = _finite(d.get(metric)) if metric else None
        if acc is not None:
            out["step"].append(step)
            out["acc"].append(acc)
            out["bp"].append(bp)
            out["seconds"].append(seconds)
    return out


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------


def t975(df: int) -> float:
    if df <= 0:
        return float("nan")
    known = [k for k in sorted(_T975) if k <= df]
    return _T975[known[-1]] if df <= 30 else 1.96


def mean_ci(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the two-sided 95% Student-t interval); half-width nan for one value."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, float("nan")
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
    return m, t975(len(vals) - 1) * sd / math.sqrt(len(vals))


def first_reach(curve: dict, target: float) -> Optional[dict]:
    """The first validation point with accuracy >= ``target`` (step, bp, seconds), or None."""
    for i, acc in enumerate(curve["acc"]):
        if acc >= target - 1e-12:
            return {"step": curve["step"][i], "bp": curve["bp"][i], "seconds": curve["seconds"][i]}
    return None


def summarize(curves: dict[str, dict[int, dict]]) -> dict:
    """curves[row][seed] -> per-row statistics (see the module docstring). Needs a ``grpo`` row; a
    row with a REFERENCE that ran (``next`` -> ``grpo_lora``) is measured against that row instead."""
    out = {}
    for row, by_seed in curves.items():
        ref = reference_of(row, curves)
        grpo = curves[ref]
        seeds = sorted(by_seed)
        final = {s: by_seed[s]["acc"][-1] if by_seed[s]["acc"] else None for s in seeds}
        peak = {s: max(by_seed[s]["acc"]) if by_seed[s]["acc"] else None for s in seeds}
        reach = {}
        for s in seeds:
            g = grpo.get(s)
            target = max(g["acc"]) if g and g["acc"] else None
            reach[s] = first_reach(by_seed[s], target) if target is not None else None
        reached = [r for r in reach.values() if r is not None]
        paired_final = [final[s] - grpo[s]["acc"][-1] for s in seeds if s in grpo and grpo[s]["acc"] and final[s] is not None]
        paired_peak = [peak[s] - max(grpo[s]["acc"]) for s in seeds if s in grpo and grpo[s]["acc"] and peak[s] is not None]
        out[row] = {
            "seeds": seeds, "reference": ref,
            "step0": {s: by_seed[s]["acc"][0] if by_seed[s]["step"] and by_seed[s]["step"][0] == 0 else None for s in seeds},
            "final": final, "final_mean_ci": mean_ci(list(final.values())),
            "peak": peak, "peak_mean_ci": mean_ci(list(peak.values())),
            "reach": reach, "reached": f"{len(reached)}/{len(seeds)}",
            "reach_mean": {k: (sum(r[k] for r in reached) / len(reached) if reached else None) for k in ("step", "bp", "seconds")},
            "shutoff": {s: by_seed[s]["shutoff"] for s in seeds},
            "next_seconds": {s: by_seed[s]["next_seconds"] for s in seeds if by_seed[s].get("next_seconds") is not None},
            "next_events_mean": (sum(by_seed[s].get("next_events") or 0 for s in seeds) / len(seeds)) if seeds else 0.0,
            "capo_masked": {s: by_seed[s]["capo_masked"] for s in seeds if by_seed[s].get("capo_masked") is not None},
            "paired_final_diff": mean_ci(paired_final), "paired_peak_diff": mean_ci(paired_peak),
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


def plot(curves: dict[str, dict[int, dict]], path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for row, by_seed in curves.items():
        runs = [c for c in by_seed.values() if c["acc"]]
        if not runs:
            continue
        common = sorted(set.intersection(*[set(c["step"]) for c in runs]))
        if not common:
            continue
        idx = [{st: i for i, st in enumerate(c["step"])} for c in runs]
        ys = [[c["acc"][m[st]] for c, m in zip(runs, idx)] for st in common]
        mean_y = [sum(v) / len(v) for v in ys]
        lo, hi = [min(v) for v in ys], [max(v) for v in ys]
        for ax, xkey, xlabel in zip(axes, ("step", "bp", "seconds"), ("training step", "backward passes", "training seconds")):
            xs = [sum(c[xkey][m[st]] for c, m in zip(runs, idx)) / len(runs) for st in common]
            (line,) = ax.plot(xs, mean_y, marker="o", ms=3, label=f"{row} (n={len(runs)})")
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
            ax.set_xlabel(xlabel)
    axes[0].set_ylabel(f"validation accuracy\n({metric})")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Embedded task: mean over seeds (band: min..max)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(out: Path, rows: list[str], seeds: list[int], steps: int) -> str:
    curves: dict[str, dict[int, dict]] = {}
    wall: dict[str, float] = {}
    metric = None
    for row in rows:
        curves[row] = {}
        for s in seeds:
            run_dir = out / row / f"seed{s}"
            data = run_layout.read_metrics(str(run_dir))
            if not data:
                continue
            c = run_curve(data, rule_of(row))
            metric = metric or c["metric"]
            curves[row][s] = c
            w = run_dir / "wall_s.txt"
            if w.exists():
                wall[f"{row}/s{s}"] = float(w.read_text())
    if not curves.get("grpo"):
        raise SystemExit(f"[compare] no GRPO metrics under {out / 'grpo'}: GRPO is the reference row")
    stats = summarize(curves)
    md = markdown(stats, metric or "?", steps, wall)
    (out / "summary.md").write_text(md)
    (out / "summary.json").write_text(json.dumps({"metric": metric, "steps": steps, "stats": stats, "curves": curves, "wall_s": wall},
                                                 indent=1, default=str))
    plot(curves, out / "compare.png", metric or "?")
    return md
