"""A private Ray head for tests: loopback, random free ports, a short private temp dir, logical
CPUs/GPUs; run with ``--block`` in its own process group so that stopping it stops exactly the
processes the test started (``ray stop`` would stop every Ray on the machine).

:func:`local_ray_node` adds a second node to such a head (``ray start --address``, its own logical
CPUs/GPUs and ports, same loopback address): a two-node cluster on one machine, the topology a
``--nodes=2`` SLURM allocation gives."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time

from helpers.proc_env import clean_env
from verl_ext.testing.cpu_worker import free_port

RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def _stop(head: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 60), (signal.SIGKILL, 30)):
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            return
        try:
            head.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def local_ray_head(num_cpus: int = 16, num_gpus: int = 1, **env_extra: str):
    """Yields ``{"address": Jobs API URL, "temp_dir": ..., "env": env for ray/launcher commands}``."""
    env = clean_env(PYTHONUNBUFFERED="1", RAY_AUTH_MODE="disabled", **env_extra)  # no token auth on a private head
    env.pop("RAY_ADDRESS", None)
    errors = []
    for _ in range(3):  # a random port can be taken between choosing it and Ray binding it: retry with new ones
        port, dash = free_port(), free_port()
        temp_dir = tempfile.mkdtemp(prefix="rayc", dir="/tmp")  # Ray's unix-socket paths must stay short
        log_path = os.path.join(temp_dir, "head.log")
        with open(log_path, "w") as log:
            head = subprocess.Popen(
                [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                 f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", f"--num-cpus={num_cpus}",
                 f"--num-gpus={num_gpus}", "--include-dashboard=true", f"--temp-dir={temp_dir}",
                 f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        address = f"http://127.0.0.1:{dash}"
        for _ in range(120):  # the Jobs API comes up a little after the head
            if head.poll() is not None:
                break
            if subprocess.run([RAY, "job", "list", "--address", address], env=env, capture_output=True).returncode == 0:
                break
            time.sleep(2)
        if head.poll() is None:
            break
        errors.append(open(log_path).read()[-3000:])
        _stop(head)
    else:
        raise RuntimeError("ray start --head failed three times:\n" + "\n---\n".join(errors))
    try:
        yield {"address": address, "temp_dir": temp_dir, "env": env, "gcs_address": f"127.0.0.1:{port}"}
    finally:
        _stop(head)


def _alive_nodes(head: dict) -> int:
    code = ("import ray; ray.init(address={!r}, logging_level='ERROR'); "
            "print(sum(1 for n in ray.nodes() if n['Alive']))").format(head["gcs_address"])
    proc = subprocess.run([sys.executable, "-c", code], env=head["env"], capture_output=True, text=True, timeout=120)
    return int(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 and proc.stdout.strip() else 0


@contextlib.contextmanager
def local_ray_node(head: dict, num_cpus: int = 16, num_gpus: int = 1, expect_nodes: int = 2):
    """A worker node joined to ``head`` (from :func:`local_ray_head`) for the ``with`` block; yields
    its log path once the cluster counts ``expect_nodes`` alive nodes."""
    log_path = os.path.join(head["temp_dir"], f"node-{free_port()}.log")
    with open(log_path, "w") as log:
        node = subprocess.Popen(
            [RAY, "start", "--block", f"--address={head['gcs_address']}", "--node-ip-address=127.0.0.1",
             f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}", f"--dashboard-agent-listen-port={free_port()}",
             "--disable-usage-stats"], env=head["env"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for _ in range(60):
            if node.poll() is not None:
                raise RuntimeError("ray start --address failed:\n" + open(log_path).read()[-3000:])
            if _alive_nodes(head) >= expect_nodes:
                break
            time.sleep(2)
        else:
            raise RuntimeError("the second Ray node did not join in time:\n" + open(log_path).read()[-3000:])
        yield log_path
    finally:
        _stop(node)
