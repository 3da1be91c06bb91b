"""One live run per run directory, and metrics files that are never shared or truncated (no Ray here).

Before: two runs on one directory both exited 0, writing the same ``metrics-<second>.jsonl`` (opened
"wb") and each other's checkpoints. The real two-runs-at-once case is in test_e2e_faults.py.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from hydra import compose, initialize_config_module

from helpers.paths import REPO_ROOT
from helpers.proc_env import clean_env
from recipe.gxpo import main_gxpo, run_layout
from recipe.gxpo.run_lock import TAKE_OVER_ENV, RunDirBusy, RunDirLock, hold_run_dir
from verl_ext.core.config import ConfigError

HOLDER = """
import sys, time
from recipe.gxpo.run_lock import RunDirLock
RunDirLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """A real second process holding ``tmp_path/run`` (killed, not released, at the end)."""
    procs = []

    def start(run_dir):
        env = clean_env(PYTHONPATH=f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        p = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], env=env, stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "held"
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_a_live_run_holds_its_directory_and_a_second_is_refused_naming_it(tmp_path, holder):
    run_dir = tmp_path / "run"
    p = holder(run_dir)
    with pytest.raises(RunDirBusy) as ei:
        RunDirLock(str(run_dir)).acquire()
    msg = str(ei.value)
    assert str(run_dir) in msg and f"host {socket.gethostname()}" in msg and f"pid {p.pid}" in msg
    assert "trainer.default_local_dir" in msg


def test_a_dead_holder_is_taken_over_with_a_message(tmp_path, holder, capsys):
    run_dir = tmp_path / "run"
    p = holder(run_dir)
    p.send_signal(signal.SIGKILL)  # dies without releasing: its record stays in the lock file
    p.wait()
    assert json.loads(open(run_layout.lock_file(str(run_dir))).read())["pid"] == p.pid
    with hold_run_dir(str(run_dir)):
        out = capsys.readouterr().out
        assert "taking over run directory" in out and f"pid {p.pid}" in out
        assert json.loads(open(run_layout.lock_file(str(run_dir))).read())["pid"] == os.getpid()
    assert open(run_layout.lock_file(str(run_dir))).read() == ""  # a clean end leaves no holder
    with hold_run_dir(str(run_dir)):
        assert "taking over" not in capsys.readouterr().out


def test_without_flock_a_holder_on_another_host_is_refused_unless_taken_over(tmp_path, monkeypatch, capsys):
    """A shared filesystem without locks: the record is all there is; a live pid on this host or any
    holder on another host is refused, with the override named; the override takes it over."""
    import fcntl

    run_dir = tmp_path / "run"
    os.makedirs(run_dir)
    record = {"host": "node-17", "pid": 4242, "started": time.time()}
    with open(run_layout.lock_file(str(run_dir)), "w") as f:
        json.dump(record, f)

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(RunDirBusy) as ei:
        RunDirLock(str(run_dir)).acquire()
    assert "host node-17, pid 4242" in str(ei.value) and f"{TAKE_OVER_ENV}=1" in str(ei.value)
    monkeypatch.setenv(TAKE_OVER_ENV, "1")
    lock = RunDirLock(str(run_dir)).acquire()
    assert "taking over" in capsys.readouterr().out
    lock.release()


def _compose(*overrides):
    with initialize_config_module(config_module="recipe.gxpo.config", version_base=None):
        return compose("gxpo_trainer", overrides=list(overrides))


def test_metrics_files_are_new_per_launch_and_never_truncated(tmp_path, monkeypatch):
    monkeypatch.delenv("VERL_FILE_LOGGER_PATH", raising=False)
    names = {run_layout.reserve_metrics_file(str(tmp_path)) for _ in range(3)}  # same second, same pid
    assert len(names) == 3 and all(os.path.getsize(n) == 0 for n in names)
    cfg = _compose(f"trainer.default_local_dir={tmp_path}")
    path = main_gxpo.prepare_outputs(cfg)
    assert path not in names and os.path.exists(path)
    # a metrics file that already holds a run's metrics is never handed to verl's file logger ("wb")
    old = tmp_path / "metrics-old.jsonl"
    old.write_text('{"step": 1, "data": {}}\n')
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(old))
    with pytest.raises(ConfigError, match="VERL_FILE_LOGGER_PATH"):
        main_gxpo.prepare_outputs(_compose(f"trainer.default_local_dir={tmp_path}"))
    assert old.read_text() == '{"step": 1, "data": {}}\n'


def test_cli_refuses_a_second_run_on_a_held_directory_before_ray(tmp_path, holder):
    run_dir = tmp_path / "run"
    p = holder(run_dir)
    env = clean_env(RAY_ADDRESS="local", HYDRA_FULL_ERROR="1")
    proc = subprocess.run(
        [sys.executable, "-m", "recipe.gxpo.main_gxpo", f"trainer.default_local_dir={run_dir}",
         f"gxpo_embedded.dir={tmp_path / 'emb'}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"run directory {run_dir} is in use by another run" in out and f"pid {p.pid}" in out
    assert "Started a local Ray instance" not in out and not (tmp_path / "emb").exists()
    assert not list(run_dir.glob("metrics-*"))
