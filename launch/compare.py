"""GRPO vs SFPO vs GXPO (and the other accelerators) on the recipe's embedded task, several seeds, with
error bars -- Table 2 / Figure 3 in miniature.

    python -m launch.compare --seeds 3 [--steps 20] [--out runs/compare]
        [--rows grpo,sfpo,gxpo_paper_text,gxpo_authors|all] [--test-freq N] [--resume] [--report-only]
        [-- hydra overrides]

The rows and how each (row, seed) run is made: :mod:`recipe.gxpo.compare`. The runs go one after
another, seed-major (a partial compare still has every row for the first seeds). The report --
``summary.md`` / ``summary.json`` / ``compare.png`` in ``--out`` -- is :mod:`launch.report.paired`,
which reads the runs, their statistics and plots with :mod:`launch.report`'s own code; ``python -m
launch.report --runs <out>`` gives the paper's tables and iso-budget views of the same runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from launch.report import paired
from recipe.gxpo import compare


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/compare")
    ap.add_argument("--seeds", type=int, default=3, help="number of seeds (data.seed = 1..N)")
    ap.add_argument("--steps", type=int, default=20,
                    help="training steps per run (default 20: validation at steps 0, 10 and 20)")
    ap.add_argument("--rows", default=None, help=f"comma list of {', '.join(compare.ROWS)} (default: {', '.join(compare.DEFAULT_ROWS)})")
    ap.add_argument("--report-only", action="store_true", help="rebuild summary and plot from existing runs")
    ap.add_argument("--resume", action="store_true",
                    help="keep (row, seed) runs that already finished under --out with the same overrides; run the rest")
    ap.add_argument("--test-freq", type=int, default=None,
                    help="validate every N steps (trainer.test_freq=N for every run): steps / BP / seconds to the "
                         "reference's peak at that resolution")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides applied to every run (after --)")
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.steps < 1:
        ap.error("--seeds and --steps must be >= 1")
    if args.test_freq is not None:
        if args.test_freq < 1:
            ap.error(f"--test-freq={args.test_freq}: must be >= 1")
        args.overrides = [*args.overrides, f"trainer.test_freq={args.test_freq}"]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.rows == "all":
        rows = [r for r in compare.ROWS if r != "gxpo"]
    elif args.rows:
        rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    else:
        rows = list(compare.DEFAULT_ROWS)
        if not args.report_only and not compare.config_has_variant(args.overrides):
            print("[compare] this config has no actor.gxpo.variant knob: one 'gxpo' row instead of the two variants", flush=True)
            rows = [r for r in rows if r not in compare.VARIANT_ROWS] + ["gxpo"]
    bad = [r for r in rows if r not in compare.ROWS]
    if bad or "grpo" not in rows:
        ap.error(f"--rows={args.rows!r}: allowed {', '.join(compare.ROWS)} or all, and grpo must be included (the reference)")
    for row in rows:  # LoRA rows are measured against LoRA GRPO only (never full-parameter GRPO): it must run
        if compare.REFERENCE.get(row) == "grpo_lora" and "grpo_lora" not in rows:
            ap.error(f"--rows={args.rows!r}: {row} is measured against LoRA GRPO; add grpo_lora to the rows")
    seeds = list(range(1, args.seeds + 1))
    if not args.report_only:
        t0 = time.time()
        for s in seeds:  # seed-major: a partial compare still has every row for the first seeds
            for row in rows:
                compare.run_one(row, s, out, args.steps, args.overrides, resume=args.resume)
        print(f"[compare] all runs done in {(time.time() - t0) / 60:.1f} min", flush=True)
    md = paired.report(out, rows, seeds, args.steps)
    print(md)
    print(f"summary: {out / 'summary.md'}  plot: {out / 'compare.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
