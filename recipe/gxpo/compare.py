"""GRPO vs SFPO vs GXPO side by side on the recipe's default task -- the paper's Table 2 / Figure 3 in miniature.

    python -m recipe.gxpo.compare --out runs/compare [--steps 60] [--methods grpo,sfpo,gxpo] [-- overrides]

Runs ``python -m recipe.gxpo.main_gxpo`` once per update rule, one after another, with the same
config and seeds (data order, model init) except ``actor_rollout_ref.actor.update_rule``; then
``launch.report`` turns their logs into a table (final and peak validation accuracy; steps,
backward passes and seconds to reach GRPO's peak; the GXPO/SFPO shutoff update) and PNG plots of
validation accuracy against steps, backward passes and wall-clock. Nothing is asserted: it reports.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

METRIC = "val-core/arithmetic/acc/mean@4"
DEFAULT_KNOBS = {"grpo": {}, "sfpo": {"K": 3, "alpha": 0.8}, "gxpo": {"K": 5, "alpha": 1.0}}


def run_method(method: str, out: Path, steps: int, overrides: list[str]) -> Path:
    run_dir = out / method
    run_dir.mkdir(parents=True, exist_ok=True)
    args = [
        f"actor_rollout_ref.actor.update_rule={method}", f"trainer.default_local_dir={run_dir}",
        f"trainer.experiment_name=compare_{method}", f"trainer.total_training_steps={steps}",
        "trainer.resume_mode=disable", *overrides,
    ]
    meta = {"model": "tiny-qwen2 (arithmetic)", "method": method, **DEFAULT_KNOBS[method]}
    for o in overrides:  # K / alpha overrides for the run's label
        key, _, val = o.partition("=")
        if key == f"actor_rollout_ref.actor.{method}.K":
            meta["K"] = int(val)
        if key == f"actor_rollout_ref.actor.{method}.alpha":
            meta["alpha"] = float(val)
    (run_dir / "meta.json").write_text(json.dumps(meta))
    print(f"[compare] {method}: python -m recipe.gxpo.main_gxpo {' '.join(args)}", flush=True)
    with open(run_dir / "stdout.log", "w") as log:
        proc = subprocess.run([sys.executable, "-m", "recipe.gxpo.main_gxpo", *args], stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"[compare] {method} failed (exit {proc.returncode}); see {run_dir / 'stdout.log'}")
    return run_dir


def shutoff_of(run_dir: Path, method: str) -> str:
    from recipe.gxpo.summary import read_metrics

    rows = read_metrics(str(run_dir))
    vals = [r[f"{method}/shutoff_update"] for r in rows if f"{method}/shutoff_update" in r]
    if method == "grpo" or not vals:
        return "-"
    return "never" if vals[-1] < 0 else f"update {int(vals[-1])}"


def summary_table(report: dict, runs: dict[str, Path]) -> str:
    t2 = report["table2"][METRIC]
    lines = ["| method | final acc | peak acc | steps to GRPO peak | BPs to GRPO peak | seconds to GRPO peak | shutoff |",
             "|---|---|---|---|---|---|---|"]
    finals = {}
    for g in report["groups"]:
        c = g.curve(METRIC, _opts())
        finals[g.method] = float(c["acc"].iloc[-1]) if len(c) else float("nan")
    for _, row in t2.iterrows():
        m = str(row["Method"]).lower()

        def fmt(v, scale=1.0):
            return "not reached" if v != v else f"{v * scale:.0f}"

        lines.append(
            f"| {row['Method']} | {finals.get(m, float('nan')):.3f} | {row['Peak Acc.']:.3f} | "
            f"{fmt(row['Steps to match GRPO'])} | {fmt(row['BPs to match GRPO'])} | "
            f"{fmt(row['Hours to match GRPO'], 3600)} | {shutoff_of(runs[m], m)} |"
        )
    return "\n".join(lines)


def _opts():
    from launch.report import Options

    return Options(benchmarks={"arithmetic": "Arithmetic"})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/compare")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--methods", default="grpo,sfpo,gxpo")
    ap.add_argument("--report-only", action="store_true", help="rebuild the table/plots from existing runs")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides applied to every run (after --)")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in DEFAULT_KNOBS]
    if bad or "grpo" not in methods:
        ap.error(f"--methods={args.methods!r}: allowed grpo, sfpo, gxpo, and grpo must be included (the reference)")
    runs = {}
    for m in methods:
        runs[m] = out / m if args.report_only else run_method(m, out, args.steps, args.overrides)

    from launch.report import build_report

    report = build_report([str(p) for p in runs.values()], out / "report", metrics=[METRIC], opts=_opts())
    table = summary_table(report, runs)
    (out / "summary.md").write_text(table + "\n")
    print(table)
    print(f"\nplots and tables: {out / 'report'}  (report.md, plots/*.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
