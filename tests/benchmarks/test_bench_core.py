"""benchmarks/bench_core.py on a small model: every rule gets a row, both floors are timed, the pass counts hold."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers.paths import REPO_ROOT
from helpers.proc_env import clean_env

BENCH = os.path.join(str(REPO_ROOT), "benchmarks", "bench_core.py")
RULES = ("grpo", "sfpo", "gxpo", "gxpo_authors", "gxpo_authors_tx", "gxpo_adam_dir")


def test_one_row_per_rule_and_both_floors():
    env = clean_env(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT), GXPO_KERNELS="eager")
    res = subprocess.run([sys.executable, BENCH, "--width", "64", "--depth", "2", "--batches", "8", "--repeats", "2",
                          "--threads", "1"], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = {line.split()[0]: line.split()[1:] for line in res.stdout.splitlines()
            if line.split() and line.split()[0] in RULES}
    assert set(rows) == set(RULES), res.stdout
    # columns: batch params 1-pass-ms own-ms floor-ms own/floor x-paper own-passes update-ms x-grpo extra/params
    assert {r: int(v[7]) for r, v in rows.items()} == {"grpo": 0, "sfpo": 6, "gxpo": 14, "gxpo_authors": 14,
                                                       "gxpo_authors_tx": 22, "gxpo_adam_dir": 20}
    assert {r: float(v[10]) for r, v in rows.items()} == {"grpo": 0.0, "sfpo": 1.0, "gxpo": 2.0, "gxpo_authors": 2.0,
                                                         "gxpo_authors_tx": 4.0, "gxpo_adam_dir": 3.0}
    floors = {float(v[4]) for v in rows.values()}
    assert len(floors) == 1 and floors.pop() > 0  # one floor, measured in the same run for every rule
    assert float(rows["grpo"][9]) == 1.0 and float(rows["gxpo"][6]) == 1.0
    assert all(float(rows[r][3]) > 0 for r in RULES if r != "grpo")  # each rule's own work was timed
    (reused,) = [line for line in res.stdout.splitlines() if line.startswith("  floor over 3 reused buffers:")]
    assert float(reused.split()[5]) > 0, reused
