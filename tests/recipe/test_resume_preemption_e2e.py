"""Resume and preemption of the main job, as a user meets them, on the embedded task.

One real run is preempted by a real SIGTERM to its driver process (``python -m recipe.gxpo.main_gxpo``)
and resumed with the same command; its checkpoints are then damaged the ways runs on a cluster damage
them (a deleted rule-state file, an empty pointer, truncated shards) and the same command is run again;
last, a save runs out of space on a small tmpfs. Slow: each run of the main job takes 1-2 minutes on
2 cores; the preempted run's checkpoints are reused by every test.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers.proc_env import clean_env
from helpers.paths import REPO_ROOT
from recipe.gxpo import run_layout

pytestmark = pytest.mark.slow
TOTAL = 4
RESUME_RE = re.compile(r"^\[gxpo\] to resume: rerun the same command: python -m recipe\.gxpo\.main_gxpo .*"
                       r"\(it resumes from step (\d+), (\S+)\)$")


def _args(embedded, run_dir, total=TOTAL, save_freq=100):
    return [f"gxpo_embedded.dir={embedded}", f"trainer.default_local_dir={run_dir}",
            f"trainer.total_training_steps={total}", f"trainer.save_freq={save_freq}", "trainer.val_before_train=false",
            "trainer.test_freq=-1", "trainer.logger=[console,file]", "data.val_max_samples=32"]


def _env():
    return clean_env(RAY_ADDRESS="local", PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO_ROOT))


def _start(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "recipe.gxpo.main_gxpo", *args], cwd=cwd, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _run(args, cwd, timeout=600, name="main"):
    proc = _start(args, cwd)
    out, _ = proc.communicate(timeout=timeout)
    with open(os.path.join(cwd, f"{name}.log"), "w") as f:  # kept with the test's tmp dir, for a failure's reader
        f.write(out)
    return proc.returncode, out


def _last_line(log: str) -> str:
    return [line for line in log.splitlines() if line.strip()][-1]


def _metrics(run_dir) -> dict[int, dict]:
    return run_layout.read_metrics(str(run_dir))  # the project's one reader of a run's metrics


def _rule_state(run_dir, step):
    return torch.load(os.path.join(run_dir, f"global_step_{step}", "actor", "update_rule_rank0.pt"), weights_only=False)


def _pointer(run_dir):
    with open(os.path.join(run_dir, "latest_checkpointed_iteration.txt")) as f:
        return f.read().strip()


@pytest.fixture(scope="module")
def embedded(embedded_assets_dir):
    """The session's embedded assets (tests/conftest.py), or prebuilt ones named by GXPO_TEST_EMBEDDED_DIR."""
    return os.environ.get("GXPO_TEST_EMBEDDED_DIR") or embedded_assets_dir


@pytest.fixture(scope="module")
def preempted(embedded, tmp_path_factory):
    """A run of TOTAL steps (no periodic checkpoint: save_freq is larger) SIGTERMed once step 1 is logged,
    then the same command again. Returns the run dir, the step the preemption saved, and both logs."""
    cwd = tmp_path_factory.mktemp("preempt")
    run_dir = str(cwd / "run")
    args = _args(embedded, run_dir)
    proc = _start(args, cwd)
    deadline = time.time() + 600
    while not (os.path.isdir(run_dir) and 1 in _metrics(run_dir)):  # step 1 trained and logged
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-6000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # to the driver process only, as SLURM / Kubernetes do
    first, _ = proc.communicate(timeout=600)
    first_rc = proc.returncode
    with open(os.path.join(cwd, "preempted.log"), "w") as f:
        f.write(first)
    after_first = (sorted(os.path.basename(p) for p in glob.glob(os.path.join(run_dir, "global_step_*"))),
                   _pointer(run_dir) if os.path.exists(os.path.join(run_dir, "latest_checkpointed_iteration.txt")) else None)
    rc, second = _run(args, cwd, name="resumed")
    return {"embedded": embedded, "run_dir": run_dir, "args": args, "first": first, "first_rc": first_rc,
            "after_first": after_first, "second": second, "second_rc": rc}


def test_sigterm_saves_the_step_in_progress_exits_75_and_the_same_command_resumes(preempted):
    run_dir, first = preempted["run_dir"], preempted["first"]
    assert preempted["first_rc"] == 75, first[-6000:]
    m = RESUME_RE.match(_last_line(first))
    assert m, first[-3000:]
    step = int(m.group(1))
    assert 1 <= step < TOTAL and m.group(2) == os.path.join(run_dir, f"global_step_{step}")
    assert f"saving the checkpoint of step {step} before stopping" in first  # not a periodic save (save_freq=100)
    assert preempted["after_first"] == ([f"global_step_{step}"], str(step))  # whole, and the pointer names it
    second = preempted["second"]
    assert preempted["second_rc"] == 0, second[-6000:]
    assert f"[gxpo] resume: from {run_dir}/global_step_{step} (step {step})" in second
    rows = _metrics(run_dir)
    assert set(range(1, TOTAL + 1)) <= set(rows), sorted(rows)
    # the rule continued from the preemption's checkpoint: 2 updates per step, never restarted
    assert _rule_state(run_dir, TOTAL)["n_updates"] == 2 * TOTAL
    assert _rule_state(run_dir, step)["n_updates"] == 2 * step


def test_a_deleted_rule_state_and_an_empty_pointer_resume_from_the_older_whole_checkpoint(preempted, tmp_path):
    step = int(RESUME_RE.match(_last_line(preempted["first"])).group(1))
    run_dir = str(tmp_path / "run")
    shutil.copytree(preempted["run_dir"], run_dir)
    rule = os.path.join(run_dir, f"global_step_{TOTAL}", "actor", "update_rule_rank0.pt")
    os.remove(rule)
    pointer = os.path.join(run_dir, "latest_checkpointed_iteration.txt")
    open(pointer, "w").close()
    rc, log = _run(_args(preempted["embedded"], run_dir), tmp_path)
    assert rc == 0, log[-6000:]
    assert f"[gxpo] resume: {pointer} is empty" in log
    assert f"[gxpo] resume: skipping step {TOTAL}: {rule} is missing" in log
    assert f"[gxpo] resume: from {run_dir}/global_step_{step} (step {step})" in log
    # trained again from `step`, the rule's state continuing (not "GXPO started fresh")
    assert _rule_state(run_dir, TOTAL)["n_updates"] == 2 * TOTAL and _pointer(run_dir) == str(TOTAL)


def test_truncated_shards_everywhere_refuse_to_start_before_ray_naming_each_file(preempted, tmp_path):
    step = int(RESUME_RE.match(_last_line(preempted["first"])).group(1))
    run_dir = str(tmp_path / "run")
    shutil.copytree(preempted["run_dir"], run_dir)
    cut = []
    for s in (step, TOTAL):
        shard = os.path.join(run_dir, f"global_step_{s}", "actor", "model_world_size_1_rank_0.pt")
        os.truncate(shard, os.path.getsize(shard) // 3)
        cut.append(shard)
    rc, log = _run(_args(preempted["embedded"], run_dir, total=TOTAL + 1), tmp_path, timeout=300)
    assert rc != 0
    assert f"no whole checkpoint to resume from in {run_dir}" in log and all(c in log for c in cut), log[-4000:]
    assert "Started a local Ray instance" not in log  # refused on the driver, before Ray


def _mount_tmpfs(where: str, size_bytes: int) -> bool:
    os.makedirs(where, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", where],
                          capture_output=True).returncode == 0


def test_disk_full_during_a_save_names_the_path_and_keeps_the_previous_checkpoint(preempted, tmp_path):
    """The run dir on a tmpfs with room for the previous checkpoint and ~1 MiB more: the next save
    (model shard ~0.7 MB, optimizer ~1.3 MB) runs out of space."""
    src = preempted["run_dir"]
    used = sum(os.path.getsize(p) for p in glob.glob(os.path.join(src, "**"), recursive=True) if os.path.isfile(p))
    mnt = str(tmp_path / "small")
    if not _mount_tmpfs(mnt, used + (1 << 20)):
        pytest.skip("cannot mount a tmpfs here (needs root); the same fault on a full disk is covered by the "
                    "unit test of checkpoint_files.disk_full (ENOSPC) and by this test where mounting is allowed")
    try:
        run_dir = os.path.join(mnt, "run")
        shutil.copytree(src, run_dir)
        rc, log = _run(_args(preempted["embedded"], run_dir, total=TOTAL + 1, save_freq=1), tmp_path)
        assert rc == 1, log[-6000:]
        assert f"no space left on {run_dir}/global_step_{TOTAL + 1}" in log, log[-6000:]
        assert _pointer(run_dir) == str(TOTAL) and not os.path.exists(os.path.join(run_dir, f"global_step_{TOTAL + 1}"))
        m = RESUME_RE.match(_last_line(log))
        assert m and int(m.group(1)) == TOTAL, log[-3000:]
    finally:
        subprocess.run(["umount", "-l", mnt], capture_output=True)
