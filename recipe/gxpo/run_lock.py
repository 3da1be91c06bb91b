"""One live run per run directory: the driver holds ``<run_dir>/.gxpo-run.lock`` while it runs.

Two runs on one ``trainer.default_local_dir`` overwrite each other's checkpoints and metrics. The
driver takes an exclusive ``flock`` on the run directory's lock file before Ray starts and keeps it
until it exits (the kernel drops it when the process dies, however it dies). The file also holds
the holder's host, pid and start time, for the messages:

* held by a live run: refused -- :class:`RunDirBusy` names the directory and the holder;
* left by a run that died (the lock is free, the file still names it): taken over, with a message
  naming the dead holder;
* named by a run on another host whose lock this host cannot see (a shared filesystem without
  ``flock``): refused, since this host cannot tell whether it is alive, unless the user says it is
  gone with ``GXPO_TAKE_OVER_RUN_DIR=1``.

A run that ends normally empties the file. Stdlib only (``launch.*`` may import it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time

from recipe.gxpo import run_layout

TAKE_OVER_ENV = "GXPO_TAKE_OVER_RUN_DIR"


class RunDirBusy(RuntimeError):
    """Another run holds this run directory."""


def _read_holder(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 65536).decode("utf-8", "replace").strip()
    if not raw:
        return None
    try:
        holder = json.loads(raw)
        return holder if isinstance(holder, dict) else {"raw": raw}
    except ValueError:
        return {"raw": raw}


def _describe(holder: dict) -> str:
    if "raw" in holder:
        return f"unreadable holder record {holder['raw'][:200]!r}"
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"host {holder.get('host')}, pid {holder.get('pid')}, started {when}"


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True  # exists but not ours, or unparsable: assume alive
    return True


def _write_holder(fd: int) -> dict:
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "argv": sys.argv[:20]}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(me) + "\n").encode())
    os.fsync(fd)
    return me


class RunDirLock:
    """The exclusive hold of one run directory (see the module docstring)."""

    def __init__(self, run_dir: str):
        self.run_dir = os.path.abspath(run_dir)
        self.path = run_layout.lock_file(self.run_dir)
        self.fd: int | None = None
        self.flocked = False
        self.forced = False  # held by another process, and the user said to run anyway
        self.notes: list[str] = []

    def _refuse(self, holder: dict, why: str) -> RunDirBusy:
        return RunDirBusy(
            f"run directory {self.run_dir} is in use by another run ({_describe(holder)}): {why}. Two runs on one "
            f"directory overwrite each other's checkpoints and metrics. Wait for it to end, stop it, or give this run "
            f"another trainer.default_local_dir=... (or trainer.experiment_name=...). Lock file: {self.path}")

    def acquire(self) -> "RunDirLock":
        os.makedirs(self.run_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.flocked = True
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    holder = _read_holder(fd) or {"host": "?", "pid": "?"}
                    if os.environ.get(TAKE_OVER_ENV) == "1":
                        self.forced = True
                        self.notes.append(f"{TAKE_OVER_ENV}=1: running on {self.run_dir} although its lock is held "
                                          f"({_describe(holder)})")
                    else:
                        raise self._refuse(holder, "it holds the directory's lock, so it is alive") from None
                elif e.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    self.notes.append(f"the filesystem of {self.run_dir} does not support locks ({e.strerror}): "
                                      "only the holder record guards this directory")
                else:
                    raise
            holder = _read_holder(fd)
            if holder is not None and not self.forced:
                self._judge_previous(holder)
            _write_holder(fd)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        for note in self.notes:
            print(f"[gxpo] {note}", flush=True)
        return self

    def _judge_previous(self, holder: dict) -> None:
        """A record left in the file: its run ended without releasing (it died) -- or, without flock,
        it may still be running."""
        host, pid = holder.get("host"), holder.get("pid")
        here = socket.gethostname()
        if host == here and pid == os.getpid():
            return
        if self.flocked:  # the lock was free: whoever wrote the record no longer holds it
            self.notes.append(f"taking over run directory {self.run_dir} from a run that ended without releasing it "
                              f"({_describe(holder)}; its lock is free)")
            return
        if host == here and not _pid_alive(pid):
            self.notes.append(f"taking over run directory {self.run_dir} from a stale holder ({_describe(holder)}; "
                              "that process is not running)")
            return
        if os.environ.get(TAKE_OVER_ENV) == "1":
            self.notes.append(f"{TAKE_OVER_ENV}=1: taking over run directory {self.run_dir} from {_describe(holder)}")
            return
        if host == here:
            raise self._refuse(holder, "that process is running")
        raise self._refuse(holder, f"it runs on another host, whose liveness this host ({here}) cannot check; if that "
                                   f"run is gone (e.g. its node died), rerun with {TAKE_OVER_ENV}=1 to take the "
                                   "directory over")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # a clean end leaves no holder record
        except OSError:
            pass
        os.close(self.fd)  # drops the flock
        self.fd = None


@contextlib.contextmanager
def hold_run_dir(run_dir: str):
    """Hold ``run_dir`` for the duration of the block (raises :class:`RunDirBusy` when another run holds it)."""
    lock = RunDirLock(run_dir).acquire()
    try:
        yield lock
    finally:
        lock.release()
