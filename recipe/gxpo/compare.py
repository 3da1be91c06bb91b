"""GRPO vs SFPO vs GXPO on the recipe's embedded task, several seeds, with error bars -- Table 2 / Figure 3 in miniature.

    python -m recipe.gxpo.compare --seeds 3 [--steps 20] [--out runs/compare]
        [--rows grpo,sfpo,gxpo_paper_text,gxpo_authors|all] [--resume] [--report-only] [-- hydra overrides]

Runs ``python -m recipe.gxpo.main_gxpo`` once per (row, seed), one after another, with the same
config except the row's update-rule overrides and ``data.seed`` (which the embedded preset also
feeds to the rollout's per-sample seeds and the actor's mini-batch shuffle): for one seed every row
starts from the same model, sees the same first batch and the same step-0 validation samples, so
curves differ only through the updates. Then it reads each run's metrics JSONL (verl's file logger)
and writes to ``--out``:

* ``summary.md`` / ``summary.json``: per row, mean +- 95% t-interval over seeds of the final and the
  peak validation accuracy; the steps, backward passes (BP) and training seconds (sum of
  ``timing_s/step``, validation excluded) at which the run first reached GRPO's peak of the same
  seed -- per seed, and the mean over the seeds that reached it, with "k/N reached" (a run that never
  reached it is counted as not reached, not dropped silently); the GXPO/SFPO shutoff update per
  seed; a paired comparison with GRPO (per-seed differences of final and peak accuracy, their mean
  +- 95% interval, and in how many seeds the row beat GRPO);
* ``compare.png``: mean validation curve per row (band: min..max over seeds) against steps, BP and
  training seconds (x of a point: the mean over seeds at that evaluation step).

Rows (``ROWS``): ``grpo``, ``sfpo``, ``gxpo`` (the configured GXPO), ``gxpo_paper_text`` and
``gxpo_authors`` (``actor.gxpo.variant=...``; the default rows), and the other accelerators on equal
terms: ``capo`` (``method=capo``: CAPO's token mask + GRPO), ``capo_gxpo_k5`` (CAPO + GXPO K=5),
``grpo_lora`` (LoRA rank 8, lr 1e-3) and ``next`` (``method=next`` on the same LoRA actor, with NExt's
schedule shrunk to the miniature: ``NEXT_MINI``). ``--rows all`` runs every row. Each row is measured
against full-parameter GRPO except ``next``, whose reference is ``grpo_lora`` (so ``next`` requires
it). NExt's predictor fits run inside verl's actor-update step, so its cost is in ``timing_s/step``;
its total (``next/predictor_seconds_total``) is also shown. Nothing is asserted: it reports.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

# LoRA rows (NExt extrapolates LoRA adapters): rank 8 / alpha 16 on the tiny model's projections, and
# the same step size for NExt and its LoRA GRPO reference, so the two differ only by NExt's events.
LORA = ["actor_rollout_ref.model.lora_rank=8", "actor_rollout_ref.model.lora_alpha=16",
        "actor_rollout_ref.actor.optim.lr=1.0e-3"]
# NExt's online variant (next.mode=online) shrunk to the miniature's 20-60 steps: a snapshot every
# 2 steps, a 4-snapshot window, a target 2 snapshots ahead, a predict-extend every 6 steps from step
# 8; a 300-epoch predictor fit at lr 1e-3 on unit-RMS inputs (width 256 as the authors).
NEXT_MINI = ["actor_rollout_ref.actor.next.mode=online", "actor_rollout_ref.actor.next.snapshot_every=2",
             "actor_rollout_ref.actor.next.history=4", "actor_rollout_ref.actor.next.horizon=2",
             "actor_rollout_ref.actor.next.interval=6", "actor_rollout_ref.actor.next.start_step=8",
             "actor_rollout_ref.actor.next.epochs=300", "actor_rollout_ref.actor.next.lr=1.0e-3",
             "actor_rollout_ref.actor.next.loss=mse"]
# NExt as its authors run it (next.mode=authors, conf/method/next.yaml), the schedule scaled to a
# 20-step run: the authors extend at step 150 of a LoRA GRPO that needs 400 to reach its accuracy
# (0.375 of it), 50 steps ahead, from checkpoints every 10 -- here checkpoints every step, the event
# at step 8, 3 steps ahead (training pairs from checkpoints 1..5); predictor, loss, lr, epochs and
# coefficient grid are the authors' (next.yaml). Run it with validation every 2 steps (--test-freq 2).
NEXT_AUTHORS_MINI = ["actor_rollout_ref.actor.next.snapshot_every=1", "actor_rollout_ref.actor.next.horizon=3",
                     "actor_rollout_ref.actor.next.extend_at=8"]

# CAPO's own claim ("stable where baselines fail"): an aggressive step size. The embedded task's
# default is 1e-4 (a warm-started model); at 1e-3 GRPO's first updates wreck it (conf/experiment/cpu_arithmetic.yaml).
AGGRESSIVE_LR = ["actor_rollout_ref.actor.optim.lr=1.0e-3"]
RAISED_LR = ["actor_rollout_ref.actor.optim.lr=3.0e-4"]  # between the two: GRPO degrades

# row -> the Hydra overrides that make it (on top of the embedded default and the user's overrides)
ROWS: dict[str, list[str]] = {
    "grpo": ["actor_rollout_ref.actor.update_rule=grpo"],
    "sfpo": ["actor_rollout_ref.actor.update_rule=sfpo"],
    "gxpo": ["actor_rollout_ref.actor.update_rule=gxpo"],
    "gxpo_paper_text": ["actor_rollout_ref.actor.update_rule=gxpo", "actor_rollout_ref.actor.gxpo.variant=paper_text"],
    "gxpo_authors": ["actor_rollout_ref.actor.update_rule=gxpo", "actor_rollout_ref.actor.gxpo.variant=authors"],
    "capo": ["method=capo"],                      # the authors' CAPO recipe (Adam model, 1e-4/0.01, top-50) + GRPO
    "capo_sgd": ["method=capo_sgd"],              # CAPO's SGD-model ablation (1e-3/5e-4, full vocabulary)
    "capo_gxpo_k5": ["method=capo_gxpo_k5"],      # the CAPO recipe's token mask + GXPO K=5
    "grpo_lr1e-3": ["actor_rollout_ref.actor.update_rule=grpo", *AGGRESSIVE_LR],
    "capo_lr1e-3": ["method=capo", *AGGRESSIVE_LR],
    "grpo_lr3e-4": ["actor_rollout_ref.actor.update_rule=grpo", *RAISED_LR],
    "capo_lr3e-4": ["method=capo", *RAISED_LR],
    "grpo_lora": ["actor_rollout_ref.actor.update_rule=grpo", *LORA],
    "next": ["method=next", *LORA, *NEXT_AUTHORS_MINI],   # NExt as its authors run it (scaled) + LoRA GRPO
    "next_online": ["method=next", *LORA, *NEXT_MINI],    # NExt's online variant + LoRA GRPO
}
# the update rule a row's counters are logged under (<rule>/backward_passes, <rule>/shutoff_update)
ROW_RULE = {"grpo": "grpo", "sfpo": "sfpo", "gxpo": "gxpo", "gxpo_paper_text": "gxpo", "gxpo_authors": "gxpo",
            "capo": "grpo", "capo_sgd": "grpo", "capo_gxpo_k5": "gxpo", "grpo_lr1e-3": "grpo", "capo_lr1e-3": "grpo",
            "grpo_lr3e-4": "grpo", "capo_lr3e-4": "grpo", "grpo_lora": "grpo", "next": "grpo", "next_online": "grpo"}
# the GRPO row a row is measured against ("to GRPO's peak", paired differences): LoRA rows against
# LoRA GRPO, everything else against full-parameter GRPO
REFERENCE = {"grpo_lora": "grpo", "next": "grpo_lora", "next_online": "grpo_lora", "grpo_lr1e-3": "grpo",
             "capo_lr1e-3": "grpo_lr1e-3", "grpo_lr3e-4": "grpo", "capo_lr3e-4": "grpo_lr3e-4"}
VARIANT_ROWS = ("gxpo_paper_text", "gxpo_authors")
DEFAULT_ROWS = ("grpo", "sfpo", "gxpo_paper_text", "gxpo_authors")
ACCEL_ROWS = ("capo", "capo_gxpo_k5", "grpo_lora", "next")

# two-sided 95% Student-t quantiles t_{0.975, df}
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


# ---------------------------------------------------------------------------------------------
# metrics files (verl's file logger: one {"step": int, "data": {...}} object a line)
# ---------------------------------------------------------------------------------------------


def read_run(run_dir: str) -> dict[int, dict]:
    """step -> merged metrics of every ``metrics*.jsonl`` in ``run_dir`` (later files win on a step)."""
    steps: dict[int, dict] = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "metrics*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a killed run
                data = rec.get("data", {})
                step = rec.get("step", data.get("training/global_step"))
                if step is None:
                    continue
                steps.setdefault(int(step), {}).update(data)
    return dict(sorted(steps.items()))


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


# ---------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------


def config_has_variant(overrides: list[str]) -> bool:
    """Does the recipe's composed config have ``actor.gxpo.variant`` (the GXPO variants knob)?"""
    from hydra import compose, initialize_config_dir

    conf_dir = str(Path(__file__).resolve().parent / "config")
    with initialize_config_dir(config_dir=conf_dir, version_base=None):
        cfg = compose(config_name="gxpo_trainer", overrides=list(overrides))
    return "variant" in cfg.actor_rollout_ref.actor.gxpo


def rule_of(row: str) -> str:
    return ROW_RULE[row]


def reference_of(row: str, rows) -> str:
    """The GRPO row ``row`` is compared with: its REFERENCE when that row ran, else ``grpo``."""
    ref = REFERENCE.get(row, "grpo")
    return ref if ref in rows and ref != row else "grpo"


def run_args(row: str, seed: int, run_dir: Path, steps: int, overrides: list[str]) -> list[str]:
    """The run's Hydra overrides; Hydra's own record of the run (``.hydra/config.yaml``, the
    resolved config that ``launch.report`` reads) goes into the run directory, not ``./outputs``."""
    return [
        *ROWS[row], f"data.seed={seed}", f"trainer.default_local_dir={run_dir}",
        f"trainer.experiment_name=compare_{row}_s{seed}", f"trainer.total_training_steps={steps}",
        "trainer.resume_mode=disable", "trainer.save_freq=-1", f"hydra.run.dir={run_dir / 'hydra' / 'run'}",
        *overrides,
    ]


def _training_args(args: list[str]) -> list[str]:
    """The overrides that decide what a run trains (``hydra.*`` only places Hydra's records)."""
    return [a for a in args if not a.lstrip("+~").startswith("hydra.")]


def finished(run_dir: Path, args: list[str]) -> bool:
    """Did a run with the same training overrides finish in ``run_dir`` (``wall_s.txt`` is written last)?"""
    try:
        meta = json.loads((run_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return _training_args(meta.get("overrides") or []) == _training_args(args) and (run_dir / "wall_s.txt").exists()


def run_one(row: str, seed: int, out: Path, steps: int, overrides: list[str], resume: bool = False) -> tuple[Path, float]:
    run_dir = out / row / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    args = run_args(row, seed, run_dir, steps, overrides)
    if resume and finished(run_dir, args):
        wall = float((run_dir / "wall_s.txt").read_text())
        print(f"[compare] {row} seed {seed}: finished earlier with the same overrides ({wall / 60:.1f} min), kept", flush=True)
        return run_dir, wall
    for old in glob.glob(str(run_dir / "metrics*.jsonl")) + glob.glob(str(run_dir / "wall_s.txt")):
        os.remove(old)
    (run_dir / "meta.json").write_text(json.dumps({"row": row, "seed": seed, "overrides": args}, indent=1))
    print(f"[compare] {row} seed {seed}: python -m recipe.gxpo.main_gxpo {' '.join(args)}", flush=True)
    t0 = time.time()
    with open(run_dir / "stdout.log", "w") as log:
        proc = subprocess.run([sys.executable, "-m", "recipe.gxpo.main_gxpo", *args], stdout=log, stderr=subprocess.STDOUT)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"[compare] {row} seed {seed} failed (exit {proc.returncode}); see {run_dir / 'stdout.log'}")
    (run_dir / "wall_s.txt").write_text(f"{wall:.1f}\n")
    print(f"[compare] {row} seed {seed}: done in {wall / 60:.1f} min", flush=True)
    return run_dir, wall


def report(out: Path, rows: list[str], seeds: list[int], steps: int) -> str:
    curves: dict[str, dict[int, dict]] = {}
    wall: dict[str, float] = {}
    metric = None
    for row in rows:
        curves[row] = {}
        for s in seeds:
            run_dir = out / row / f"seed{s}"
            data = read_run(str(run_dir))
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/compare")
    ap.add_argument("--seeds", type=int, default=3, help="number of seeds (data.seed = 1..N)")
    ap.add_argument("--steps", type=int, default=20,
                    help="training steps per run (default 20: validation at steps 0, 10 and 20)")
    ap.add_argument("--rows", default=None, help=f"comma list of {', '.join(ROWS)} (default: {', '.join(DEFAULT_ROWS)})")
    ap.add_argument("--report-only", action="store_true", help="rebuild summary and plot from existing runs")
    ap.add_argument("--resume", action="store_true",
                    help="keep (row, seed) runs that already finished under --out with the same overrides; run the rest")
    ap.add_argument("--test-freq", type=int, default=None,
                    help="validate every N steps (trainer.test_freq=N for every run): steps / BP / seconds to the "
                         "reference's peak at that resolution")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides applied to every run (after --)")
    args = ap.parse_args(argv)
    if args.test_freq is not None:
        if args.test_freq < 1:
            ap.error(f"--test-freq={args.test_freq}: must be >= 1")
        args.overrides = [*args.overrides, f"trainer.test_freq={args.test_freq}"]
    if args.seeds < 1 or args.steps < 1:
        ap.error("--seeds and --steps must be >= 1")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.rows == "all":
        rows = [r for r in ROWS if r != "gxpo"]
    elif args.rows:
        rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    else:
        rows = list(DEFAULT_ROWS)
        if not args.report_only and not config_has_variant(args.overrides):
            print("[compare] this config has no actor.gxpo.variant knob: one 'gxpo' row instead of the two variants", flush=True)
            rows = [r for r in rows if r not in VARIANT_ROWS] + ["gxpo"]
    bad = [r for r in rows if r not in ROWS]
    if bad or "grpo" not in rows:
        ap.error(f"--rows={args.rows!r}: allowed {', '.join(ROWS)} or all, and grpo must be included (the reference)")
    if "next" in rows and "grpo_lora" not in rows:
        ap.error(f"--rows={args.rows!r}: next is measured against LoRA GRPO; add grpo_lora to the rows")
    seeds = list(range(1, args.seeds + 1))
    if not args.report_only:
        t0 = time.time()
        for s in seeds:  # seed-major: a partial compare still has every row for the first seeds
            for row in rows:
                run_one(row, s, out, args.steps, args.overrides, resume=args.resume)
        print(f"[compare] all runs done in {(time.time() - t0) / 60:.1f} min", flush=True)
    md = report(out, rows, seeds, args.steps)
    print(md)
    print(f"summary: {out / 'summary.md'}  plot: {out / 'compare.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
