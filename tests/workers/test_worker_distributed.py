"""The GXPO worker in several processes (torchrun, FSDP2 over gloo) on verl's real engine.

* two ranks, every gate option: rank 0 alone is told to trip (or to see a failed probe); with the
  decision broadcast over the actor group both ranks take the same decisions at the same update;
* four ranks as HSDP, a 2 x 2 (replica x shard) mesh: reductions run over the shard group, the
  decision over all four ranks. Rank 0 alone is told to trip; if each replica group decided alone
  (the old bug) replica 1 would keep running three passes while replica 0 runs one, and FSDP's
  cross-replica gradient all-reduce would deadlock: the run is bounded by a timeout and the
  process group killed, so the test fails instead of hanging.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch
from helpers.proc_env import clean_env

pytest.importorskip("verl")

from verl_ext.models.tiny import build_tiny_model  # noqa: E402
from verl_ext.testing.cpu_worker import free_port  # noqa: E402
from helpers.paths import SCRIPTS_DIR

SCRIPT = str(SCRIPTS_DIR / "gxpo_worker_torchrun.py")
OPTIONS = ("default", "two_sided", "ema", "patience", "corrective_norm_clipped", "probe_norm", "entropy", "cosine",
           "step", "authors", "fallback")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return build_tiny_model(str(tmp_path_factory.mktemp("tiny") / "qwen2"))


def run_torchrun(nproc: int, out_dir, model_path, timeout: float, **env_extra) -> list[dict]:
    """Launch the script under torchrun in its own process group; kill the whole group on timeout."""
    env = clean_env(TINY_MODEL=model_path, OUT_DIR=str(out_dir), OMP_NUM_THREADS="1", **env_extra)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}", SCRIPT]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"torchrun with {nproc} ranks did not finish in {timeout:.0f} s (desynchronised ranks hang):\n{log[-3000:]}")
    assert proc.returncode == 0, log[-5000:]
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(nproc)]


@pytest.mark.slow
def test_two_ranks_agree_for_every_gate_option(model_path, tmp_path):
    r0, r1 = run_torchrun(2, tmp_path, model_path, timeout=900, GATE_OPTIONS=",".join(OPTIONS), CALLS="4")
    assert set(r0) == set(OPTIONS)
    for name in OPTIONS:
        a, b = r0[name], r1[name]
        assert a["active"] == b["active"], name
        assert str(a["gate"]) == str(b["gate"]), name  # NaN-safe (last_z is NaN before any z)
        assert (a["passes"], a["fallback_steps"]) == (b["passes"], b["fallback_steps"]), name
        assert a["groups"] == [2, 2], name
        if name == "fallback":  # rank 0 alone saw probe 1 fail: every update was probe 1 + one plain step
            assert a["fallback_steps"] == 4 and a["passes"] == 8 and a["active"] == [1.0] * 4
        else:  # tripped (by rank 0's threshold) after the 2 warm-up updates (patience 2: one later), on both ranks
            assert a["active"][0] == 1.0 and a["active"][-1] == 0.0, (name, a["active"])
            assert a["gate"]["shutoff_update"] >= 2, name


@pytest.mark.slow
def test_hsdp_2x2_shuts_off_all_four_ranks_at_the_same_update(model_path, tmp_path):
    ranks = run_torchrun(4, tmp_path, model_path, timeout=600, GATE_OPTIONS="default", FSDP_SIZE="2", CALLS="5", MICRO="2")
    res = [r["default"] for r in ranks]
    assert all(r["groups"] == [2, 4] for r in res)  # shard group of 2 for reductions, all 4 ranks for the decision
    assert all(r["active"] == res[0]["active"] for r in res)
    assert all(str(r["gate"]) == str(res[0]["gate"]) for r in res)
    assert res[0]["active"][0] == 1.0 and res[0]["active"][-1] == 0.0 and res[0]["gate"]["shutoff_update"] >= 2
    # global norms: both replicas reduce their (identical) shards over their own shard group
    assert all(r["probe_norms"] == res[0]["probe_norms"] for r in res)
