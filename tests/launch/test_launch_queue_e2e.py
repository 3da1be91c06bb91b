"""Jobs sharing one Ray cluster, submitted with the launchers' defaults (no ``--max-concurrent``).

* A grid larger than the cluster queues and finishes: two runs of the embedded task (1 GPU each)
  on a head advertising 1 GPU. Before the fix the second job died in verl's resource check
  ("Total available GPUs 0 is less than total desired GPUs 1"); now its driver waits for the GPU
  (verl_ext/workers/resource_queue.py).
* Jobs running side by side are isolated: two runs at once on a head with 2 GPUs both finish.
  Before the fix the second attached to the first one's TransferQueue (fixed namespace
  ``transfer_queue``) or failed with ``ActorAlreadyExistsError: ... TransferQueueStorageUnit#0``
  and then hung (verl_ext/platform/tq_scope.py).

Slow: two short embedded runs per test (1 step, 8 validation problems, no checkpoint).
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

from helpers.job_log import excerpt
from helpers.paths import REPO_ROOT
from helpers.ray_head import local_ray_head

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]
ROOT = str(REPO_ROOT)
GRID = ["--grid", "actor_rollout_ref.actor.gxpo.K=3,5"]


@pytest.fixture(scope="module")
def embedded(embedded_assets_dir):
    """The embedded assets, built here once before any job starts (two jobs starting together
    must not both build them)."""
    from launch.precheck import recipe_composer
    from recipe.gxpo.embedded import prepare_embedded_assets

    with recipe_composer() as compose:
        prepare_embedded_assets(compose([f"gxpo_embedded.dir={embedded_assets_dir}"]))
    return embedded_assets_dir


def _sweep(head: dict, embedded: str, logs: str, prefix: str) -> dict:
    args = [sys.executable, "-m", "launch.sweep", "--name-prefix", prefix, *GRID, "--address", head["address"],
            "--log-dir", logs, "--working-dir", ROOT, "--python", sys.executable, "--wait", "--poll-s", "5",
            "--", "experiment=cpu_arithmetic", f"gxpo_embedded.dir={embedded}", "trainer.total_training_steps=1", "trainer.test_freq=1",
            "trainer.save_freq=-1", "trainer.val_before_train=false", "data.val_max_samples=8"]
    proc = subprocess.run(args, cwd=ROOT, env=head["env"], capture_output=True, text=True, timeout=2000)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, excerpt(out) + _job_logs(head)
    results = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert sorted(results.values()) == ["SUCCEEDED", "SUCCEEDED"], out[-4000:]
    for k in (3, 5):
        metrics = glob.glob(os.path.join(logs, f"{prefix}_tiny-qwen2-warm_k{k}_s1", "metrics-*.jsonl"))
        steps = {json.loads(line)["step"] for path in metrics for line in open(path) if line.strip()}
        assert 1 in steps, (k, metrics, steps)  # the run trained its step
    return results


def _job_logs(head: dict) -> str:
    logs = glob.glob(os.path.join(head["temp_dir"], "session_latest", "logs", "job-driver-*.log"))
    return "".join(f"\n--- {p}\n" + open(p).read()[-3000:] for p in logs)


def _job_times(head: dict, sids) -> dict[str, tuple[int, int]]:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(head["address"])
    return {sid: (client.get_job_info(sid).start_time, client.get_job_info(sid).end_time) for sid in sids}


def test_grid_larger_than_the_cluster_queues_and_finishes(embedded, tmp_path):
    with local_ray_head(num_gpus=1, PYTHONPATH=ROOT) as head:
        _sweep(head, embedded, str(tmp_path / "runs"), "queue")
        drivers = _job_logs(head)
    assert "Total available GPUs" not in drivers


def test_two_jobs_at_once_on_one_cluster_are_isolated(embedded, tmp_path):
    with local_ray_head(num_gpus=2, PYTHONPATH=ROOT) as head:
        results = _sweep(head, embedded, str(tmp_path / "runs"), "iso")
        (a0, a1), (b0, b1) = _job_times(head, results).values()
        drivers = _job_logs(head)
    assert a0 < b1 and b0 < a1, "the two jobs did not run at the same time"
    assert "ActorAlreadyExistsError" not in drivers
