"""A private single-node SLURM for tests: munged, slurmctld and slurmd on loopback with a generated
munge key and slurm.conf in a temporary directory, random free ports, run in the foreground in their own
process groups, so stopping it stops exactly the daemons the test started (never a system SLURM).

Needs Debian's ``slurm-wlm`` and ``munge`` (``tools/install_slurm.sh``; ``.ci/run`` runs it as root) and
root (slurmd starts job steps as the submitting user). :func:`available` says why not when it can't run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from verl_ext.testing.cpu_worker import free_port

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "scancel", "squeue", "scontrol", "srun")


def _which(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None)


def available() -> str | None:
    """None when a private SLURM can start here, else the reason it can't."""
    missing = [n for n in DAEMONS + CLIENTS if _which(n) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (tools/install_slurm.sh installs slurm-wlm and munge)"
    if os.geteuid() != 0:
        return "slurmd must run as root"
    return None


SLURM_CONF = """\
ClusterName=gxpotest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobRequeue=1
MailProg=/bin/true
KillWait=30
MinJobAge=600
SlurmdParameters=config_overrides
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


def _wait(what: str, check, timeout: float, procs: list[subprocess.Popen], logs: list[str]) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            break
        time.sleep(0.5)
    tails = "\n".join(f"--- {l}\n{open(l).read()[-2000:]}" for l in logs if os.path.exists(l))
    raise RuntimeError(f"private SLURM: {what} did not come up\n{tails}")


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def private_slurm(cpus: int | None = None):
    """Yields ``{"env": env for sbatch/squeue/... (SLURM_CONF set), "dir": the temp dir, "host": node}``."""
    d = tempfile.mkdtemp(prefix="slurm", dir="/tmp")
    os.chmod(d, 0o700)
    for sub in ("state", "spool", "munge"):
        os.makedirs(os.path.join(d, sub), mode=0o700)
    key = os.path.join(d, "munge", "munge.key")
    with open(key, "wb") as f:
        f.write(os.urandom(1024))
    os.chmod(key, 0o400)
    host = socket.gethostname().split(".")[0]
    sock = os.path.join(d, "munge", "munge.sock")
    conf = os.path.join(d, "slurm.conf")
    with open(conf, "w") as f:
        f.write(SLURM_CONF.format(host=host, ctld_port=free_port(), slurmd_port=free_port(), munge_socket=sock, d=d,
                                  cpus=cpus or os.cpu_count() or 2))
    env = dict(os.environ, SLURM_CONF=conf)
    procs: list[subprocess.Popen] = []
    logs = [os.path.join(d, n) for n in ("munged.log", "slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out")]

    def start(argv, out):
        with open(os.path.join(d, out), "w") as log:
            p = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        return p

    def ok(*argv):
        return subprocess.run(list(argv), env=env, capture_output=True, text=True).returncode == 0

    try:
        start([_which("munged"), "--foreground", "--force", f"--key-file={key}", f"--socket={sock}",
               f"--log-file={d}/munged.log", f"--pid-file={d}/munge/munged.pid", f"--seed-file={d}/munge/seed"],
              "munged.out")
        _wait("munged", lambda: os.path.exists(sock), 30, procs, logs)
        start([_which("slurmctld"), "-D", "-i", "-f", conf], "slurmctld.out")
        _wait("slurmctld", lambda: ok(_which("scontrol"), "ping"), 60, procs, logs)
        start([_which("slurmd"), "-D", "-f", conf, "-N", host], "slurmd.out")

        def node_idle():
            out = subprocess.run([_which("sinfo") or "sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True,
                                 text=True).stdout
            return "idle" in out

        _wait("slurmd (node idle)", node_idle, 60, procs, logs)
        yield {"env": env, "dir": d, "host": host, "logs": logs}
    finally:
        for p in reversed(procs):
            _stop(p)
