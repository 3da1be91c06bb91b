"""Two nodes: the multi-node path a ``--nodes=2`` SLURM allocation gives, on loopback.

A Ray head and a second ``ray start --address`` node, each with its own logical CPUs and 1 GPU
(tests/helpers/ray_head.py), run the embedded task as ``trainer.nnodes=2 trainer.n_gpus_per_node=1``
through ``launch.submit``: the actor workers run on both nodes (Ray's state API), the run trains
and saves its checkpoint; submitting it again with one more step resumes it there (step count and
backward-pass counter continue).

Slow: two short embedded runs (1 step, then 1 more).
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
from helpers.ray_head import local_ray_head, local_ray_node

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]
ROOT = str(REPO_ROOT)
# the embedded task's micro-batches are sized for one worker (8 prompts x 8 samples = 64 per step):
# with two workers each holds half, and verl requires micro-batches that divide it
HALF_MICRO_BATCHES = ["actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=32",
                      "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=32",
                      "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=16"]


@pytest.fixture(scope="module")
def embedded(embedded_assets_dir):
    from launch.precheck import recipe_composer
    from recipe.gxpo.embedded import prepare_embedded_assets

    with recipe_composer() as compose:
        prepare_embedded_assets(compose([f"gxpo_embedded.dir={embedded_assets_dir}"]))
    return embedded_assets_dir


def _metrics(run_dir: str) -> dict[int, dict]:
    rows: dict[int, dict] = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "metrics-*.jsonl"))):
        for line in open(path):
            if line.strip():
                rec = json.loads(line)
                rows.setdefault(rec["step"], {}).update(rec["data"])
    return rows


def _submit(head: dict, embedded: str, logs: str, steps: int) -> str:
    args = [sys.executable, "-m", "launch.submit", "--name", "two_nodes", "--address", head["address"],
            "--log-dir", logs, "--working-dir", ROOT, "--python", sys.executable, "--wait", "--",
            "experiment=cpu_arithmetic", f"gxpo_embedded.dir={embedded}", "trainer.nnodes=2",
            "trainer.n_gpus_per_node=1", *HALF_MICRO_BATCHES, f"trainer.total_training_steps={steps}", "trainer.test_freq=-1",
            "trainer.save_freq=1", "trainer.val_before_train=false"]
    proc = subprocess.run(args, cwd=ROOT, env=head["env"], capture_output=True, text=True, timeout=1800)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, excerpt(out)
    return out


def _worker_nodes(head: dict) -> tuple[set[str], list[str]]:
    """Node ids of the job's verl training workers (alive or finished), and every actor's class."""
    from ray.util.state import list_actors

    actors = list_actors(address=head["address"], limit=10000, detail=True, raise_on_missing_output=False)
    workers = {a.node_id for a in actors if "WorkerDict" in (a.class_name or "") and a.node_id}
    return workers, sorted({a.class_name for a in actors})


def test_two_node_cluster_runs_on_both_nodes_and_resumes(embedded, tmp_path):
    logs = str(tmp_path / "runs")
    run_dir = os.path.join(logs, "two_nodes")
    with local_ray_head(num_cpus=8, num_gpus=1, PYTHONPATH=ROOT) as head, local_ray_node(head, num_cpus=8, num_gpus=1):
        _submit(head, embedded, logs, steps=1)
        nodes, classes = _worker_nodes(head)
        assert len(nodes) == 2, f"the training workers ran on {len(nodes)} node(s): {nodes}; actors: {classes}"
        m = _metrics(run_dir)
        assert 1 in m and m[1]["gxpo/backward_passes"] > 0
        assert os.path.isdir(os.path.join(run_dir, "global_step_1", "actor"))

        out = _submit(head, embedded, logs, steps=2)  # the same run, one more step: resumes
    assert "resubmitting as 'two_nodes-" in out
    m = _metrics(run_dir)
    assert m[2]["gxpo/backward_passes"] == 2 * m[1]["gxpo/backward_passes"]  # counters continued
    assert os.path.isdir(os.path.join(run_dir, "global_step_2", "actor"))
