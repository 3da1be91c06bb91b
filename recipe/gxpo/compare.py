"""The rows of the miniature comparison (``python -m launch.compare``) and how one (row, seed) run is made.

``launch.compare`` runs ``python -m recipe.gxpo.main_gxpo`` once per (row, seed) through
:func:`run_one`, one after another, with the same config except the row's update-rule overrides and
``data.seed`` (which the embedded preset also feeds to the rollout's per-sample seeds and the
actor's mini-batch shuffle): for one seed every row starts from the same model, sees the same first
batch and the same step-0 validation samples, so curves differ only through the updates. Each run
gets its own directory ``<out>/<row>/seed<N>/`` with ``meta.json`` (row, seed, overrides), its Hydra
record and its metrics; the report (``launch.report.paired``) reads them back.

Rows (``ROWS``): ``grpo``, ``sfpo``, ``gxpo`` (the configured GXPO), ``gxpo_paper_text`` and
``gxpo_authors`` (``actor.gxpo.variant=...``; the default rows), and the other accelerators on equal
terms: ``capo`` (``method=capo``: CAPO's token mask + GRPO), ``capo_gxpo_k5`` (CAPO + GXPO K=5),
``grpo_lora`` (LoRA rank 8, lr 1e-3) and ``next`` (``method=next`` on the same LoRA actor, with NExt's
schedule shrunk to the miniature: ``NEXT_MINI``). ``--rows all`` runs every row. Each row is measured
against full-parameter GRPO except ``next``, whose reference is ``grpo_lora`` (so ``next`` requires
it). NExt's predictor fits run inside verl's actor-update step, so its cost is in ``timing_s/step``;
its total (``next/predictor_seconds_total``) is also shown.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from recipe.gxpo import run_layout

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
RAISED_LR = ["actor_rollout_ref.actor.optim.lr=3.0e-4"]  # between the two: GRPO did not degrade (one seed)
HIGH_LR = ["actor_rollout_ref.actor.optim.lr=6.0e-4"]    # between 3e-4 (GRPO fine) and 1e-3 (GRPO collapses)

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
    "grpo_lr6e-4": ["actor_rollout_ref.actor.update_rule=grpo", *HIGH_LR],
    "capo_lr6e-4": ["method=capo", *HIGH_LR],
    "grpo_lora": ["actor_rollout_ref.actor.update_rule=grpo", *LORA],
    "next": ["method=next", *LORA, *NEXT_AUTHORS_MINI],   # NExt as its authors run it (scaled) + LoRA GRPO
    "next_online": ["method=next", *LORA, *NEXT_MINI],    # NExt's online variant + LoRA GRPO
}
# the update rule a row's counters are logged under (<rule>/backward_passes, <rule>/shutoff_update)
ROW_RULE = {"grpo": "grpo", "sfpo": "sfpo", "gxpo": "gxpo", "gxpo_paper_text": "gxpo", "gxpo_authors": "gxpo",
            "capo": "grpo", "capo_sgd": "grpo", "capo_gxpo_k5": "gxpo", "grpo_lr1e-3": "grpo", "capo_lr1e-3": "grpo",
            "grpo_lr3e-4": "grpo", "capo_lr3e-4": "grpo", "grpo_lr6e-4": "grpo", "capo_lr6e-4": "grpo", "grpo_lora": "grpo", "next": "grpo", "next_online": "grpo"}
# the GRPO row a row is measured against ("to GRPO's peak", paired differences): LoRA rows against
# LoRA GRPO, everything else against full-parameter GRPO
REFERENCE = {"grpo_lora": "grpo", "next": "grpo_lora", "next_online": "grpo_lora", "grpo_lr1e-3": "grpo",
             "capo_lr1e-3": "grpo_lr1e-3", "grpo_lr3e-4": "grpo", "capo_lr3e-4": "grpo_lr3e-4", "grpo_lr6e-4": "grpo",
             "capo_lr6e-4": "grpo_lr6e-4"}
VARIANT_ROWS = ("gxpo_paper_text", "gxpo_authors")
DEFAULT_ROWS = ("grpo", "sfpo", "gxpo_paper_text", "gxpo_authors")
ACCEL_ROWS = ("capo", "capo_gxpo_k5", "grpo_lora", "next")


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
    for old in run_layout.metrics_files(str(run_dir)) + glob.glob(str(run_dir / "wall_s.txt")):
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


if __name__ == "__main__":  # the command moved with the report (launch may import recipe, not the reverse)
    sys.exit("python -m recipe.gxpo.compare is now python -m launch.compare (same arguments): "
             "the report moved to launch.report.paired")
