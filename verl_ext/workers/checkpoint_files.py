"""verl adapter: what a whole checkpoint of the GXPO recipe is, on disk, and how it is committed.

A checkpoint of verl 0.9.1's v1 trainer with the GXPO actor worker (FSDP engine) is
``<run dir>/global_step_<N>/``::

    data.pt                                   the train dataloader's state (trainer)
    actor/fsdp_config.json                    world size of the save (rank 0)
    actor/model_world_size_<W>_rank_<r>.pt    per rank, when ``checkpoint.load_contents`` has model
    actor/optim_world_size_<W>_rank_<r>.pt    ... optimizer
    actor/extra_state_world_size_<W>_rank_<r>.pt  ... extra (LR scheduler, RNG)
    actor/update_rule_rank<r>.pt              per rank, the update rule's state (gate, counters)
    actor/huggingface/                        config and tokenizer (rank 0; not read on resume)
    gxpo_checkpoint.json                      this module's manifest: every file and its size

and ``<run dir>/latest_checkpointed_iteration.txt`` (the "pointer") names the step ``resume_mode=auto``
resumes from. verl writes the pointer after the other files but not atomically (``open("w")`` then
``write``) and nothing is synced; :func:`commit` re-checks the saved files, writes the manifest,
syncs the files to disk and only then replaces the pointer atomically (write + fsync + rename), so
the pointer names a step only when its checkpoint is whole (docs/algorithm.md#resume-and-preemption).

:func:`check_checkpoint` is the one definition of "whole" used by the driver before Ray starts
(``recipe/gxpo/resume.py``), by the trainer after a save and, for one rank's files, by the worker
before it loads them. Every problem names its file.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import zipfile
from typing import Iterable, Optional

from .next_hook import NEXT_STATE_FILE  # noqa: F401  (per-rank NExt state, checked when actor.next.enable)

TRACKER = "latest_checkpointed_iteration.txt"
MANIFEST = "gxpo_checkpoint.json"
STEP_DIR = "global_step_{}"
STEP_DIR_RE = re.compile(r"^global_step_(\d+)$")
RULE_STATE_FILE = "update_rule_rank{rank}.pt"
DEFAULT_CONTENTS = ("model", "optimizer", "extra")
_SHARD = {"model": "model_world_size_{ws}_rank_{rank}.pt", "optimizer": "optim_world_size_{ws}_rank_{rank}.pt",
          "extra": "extra_state_world_size_{ws}_rank_{rank}.pt"}
_WS_RE = re.compile(r"^model_world_size_(\d+)_rank_\d+\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that is not whole, or a save that did not complete; the message names the file."""


# ------------------------------------------------------------------------------------ the pointer
def tracker_path(run_dir: str) -> str:
    return os.path.join(run_dir, TRACKER)


def step_dir(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, STEP_DIR.format(step))


def read_tracker(run_dir: str) -> tuple[Optional[int], Optional[str]]:
    """``(step, None)``; ``(None, None)`` when there is no pointer; ``(None, problem)`` when it is
    unreadable, empty or not a step number."""
    path = tracker_path(run_dir)
    if not os.path.exists(path):
        return None, None
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        return None, f"{path} cannot be read ({e.strerror or e})"
    text = raw.decode("utf-8", errors="replace").strip()
    if not text.isdigit():
        shown = "empty" if not text else f"{text[:40]!r}, not a step number"
        return None, f"{path} is {shown}"
    return int(text), None


def step_dirs(run_dir: str) -> list[tuple[int, str]]:
    """``(step, path)`` of every ``global_step_<N>`` directory, newest first."""
    try:
        names = os.listdir(run_dir)
    except OSError:
        return []
    found = [(int(m.group(1)), os.path.join(run_dir, n)) for n in names if (m := STEP_DIR_RE.match(n))]
    return sorted((s for s in found if os.path.isdir(s[1])), reverse=True)


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_dir(os.path.dirname(path))


def write_tracker(run_dir: str, step: Optional[int]) -> None:
    """Point ``latest_checkpointed_iteration.txt`` at ``step`` atomically (None: remove the pointer)."""
    path = tracker_path(run_dir)
    if step is None:
        if os.path.exists(path):
            os.remove(path)
        return
    _write_atomic(path, str(int(step)).encode())


# ------------------------------------------------------------------------------------ the files
def saved_world_size(actor_dir: str) -> tuple[Optional[int], Optional[str]]:
    """The world size the actor checkpoint was saved with (``fsdp_config.json``, else the shard names)."""
    cfg = os.path.join(actor_dir, "fsdp_config.json")
    if os.path.exists(cfg):
        try:
            with open(cfg) as f:
                return int(json.load(f)["world_size"]), None
        except (OSError, ValueError, KeyError, TypeError) as e:
            return None, f"{cfg} cannot be read ({type(e).__name__}: {e})"
    try:
        sizes = {int(m.group(1)) for n in os.listdir(actor_dir) if (m := _WS_RE.match(n))}
    except OSError:
        sizes = set()
    if len(sizes) == 1:
        return sizes.pop(), None
    return None, f"{cfg} is missing" + (f" and {actor_dir} holds shards of world sizes {sorted(sizes)}" if sizes else "")


def rank_files(actor_dir: str, rank: int, world_size: int, contents: Iterable[str] = DEFAULT_CONTENTS) -> list[str]:
    """The files one rank reads on resume: verl's shards for ``contents`` and the update-rule state."""
    files = [os.path.join(actor_dir, _SHARD[c].format(ws=world_size, rank=rank)) for c in _SHARD if c in contents]
    return files + [os.path.join(actor_dir, RULE_STATE_FILE.format(rank=rank))]


def torch_file_problem(path: str) -> Optional[str]:
    """Why ``torch.load`` could not read ``path`` (missing, empty, truncated), found without loading it:
    torch's zip container must be intact (its central directory is at the end: a cut-off file has none)
    and hold every record it lists."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return f"{path} is missing"
    if size == 0:
        return f"{path} is empty (0 bytes)"
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.header_offset + info.compress_size > size:
                    return f"{path} is truncated ({size} bytes; record {info.filename} ends past the end)"
    except zipfile.BadZipFile:
        return f"{path} is truncated or corrupted ({size} bytes; not a complete torch file)"
    except OSError as e:
        return f"{path} cannot be read ({e.strerror or e})"
    return None


def rule_state_problem(path: str) -> Optional[str]:
    """A missing or unreadable update-rule state (never read as "start the rule afresh")."""
    problem = torch_file_problem(path)
    if problem:
        return problem
    import torch

    try:
        state = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as e:  # noqa: BLE001  (any unpickling failure means the file is unusable)
        return f"{path} cannot be read ({type(e).__name__}: {e})"
    if not isinstance(state, dict) or "rule" not in state:
        return f"{path} is not an update-rule state (got {type(state).__name__})"
    return None


def manifest_problems(step_path: str) -> list[str]:
    """Files the manifest lists that are gone or have another size (no manifest: nothing to compare)."""
    path = os.path.join(step_path, MANIFEST)
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [f"{path} cannot be read ({type(e).__name__}: {e})"]
    problems = []
    for rel, size in sorted(files.items()):
        full = os.path.join(step_path, rel)
        try:
            now = os.path.getsize(full)
        except OSError:
            problems.append(f"{full} is missing (saved with {size} bytes)")
            continue
        if now != size:
            problems.append(f"{full} has {now} bytes, saved with {size} (truncated or overwritten)")
    return problems


def check_checkpoint(step_path: str, contents: Iterable[str] = DEFAULT_CONTENTS, deep: bool = True,
                     rank_extras: Iterable[str] = ()) -> list[str]:
    """Everything wrong with the checkpoint ``global_step_<N>`` for a resume that loads ``contents``
    (``actor.checkpoint.load_contents``); empty when it is whole. Each problem names its file.
    ``deep`` also unpickles the small files (update-rule state, dataloader state); ``rank_extras``
    are further per-rank torch files (``"next_state_rank{rank}.pt"`` when NExt is on)."""
    contents = tuple(contents or DEFAULT_CONTENTS)
    if not os.path.isdir(step_path):
        return [f"{step_path} is missing"]
    problems = manifest_problems(step_path)
    data = os.path.join(step_path, "data.pt")
    problem = torch_file_problem(data)
    if problem is None and deep:
        import torch

        try:
            torch.load(data, weights_only=False)
        except Exception as e:  # noqa: BLE001
            problem = f"{data} cannot be read ({type(e).__name__}: {e})"
    if problem:
        problems.append(problem + " (the dataloader state: without it the data order restarts)")
    actor = os.path.join(step_path, "actor")
    if not os.path.isdir(actor):
        return problems + [f"{actor} is missing (the actor's model, optimizer and update-rule state)"]
    ws, problem = saved_world_size(actor)
    if ws is None:
        return problems + [problem]
    for rank in range(ws):
        extras = [os.path.join(actor, pattern.format(rank=rank)) for pattern in rank_extras]
        for path in rank_files(actor, rank, ws, contents) + extras:
            if os.path.basename(path).startswith("update_rule_rank"):
                problem = rule_state_problem(path) if deep else torch_file_problem(path)
                if problem:
                    problem += " (the update rule's gate and counters; resuming without it would restart GXPO)"
            else:
                problem = torch_file_problem(path)
            if problem and problem not in problems and not any(p.startswith(path + " ") for p in problems):
                problems.append(problem)
    return problems


# ------------------------------------------------------------------------------------ committing
def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_manifest(step_path: str, step: int) -> str:
    """List every file of the checkpoint with its size (``gxpo_checkpoint.json``), after syncing them."""
    files = {}
    for root, dirs, names in os.walk(step_path):
        for name in names:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, step_path)
            if rel == MANIFEST:
                continue
            with open(full, "rb") as f:
                os.fsync(f.fileno())
            files[rel] = os.path.getsize(full)
        _fsync_dir(root)
    path = os.path.join(step_path, MANIFEST)
    _write_atomic(path, json.dumps({"step": int(step), "files": files}, indent=1, sort_keys=True).encode())
    return path


def commit(run_dir: str, step: int, contents: Iterable[str] = DEFAULT_CONTENTS, rank_extras: Iterable[str] = ()) -> str:
    """After verl saved step ``step``: check it is whole, write its manifest, sync it, then point the
    pointer at it (atomically). Raises :class:`CheckpointError` naming the files when it is not whole."""
    path = step_dir(run_dir, step)
    problems = check_checkpoint(path, contents, rank_extras=rank_extras)
    if problems:
        raise CheckpointError(f"the checkpoint of step {step} is not whole after saving it: " + "; ".join(problems))
    write_manifest(path, step)
    write_tracker(run_dir, step)
    return path


# ------------------------------------------------------------------------------------ disk full
_WRITE_FAILED = ("no space left", "file write failed", "iostream error", "enospc", "disk quota exceeded")


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__


def disk_full(path: str, exc: BaseException) -> Optional[str]:
    """``no space left on <path> (...)`` when ``exc`` (a failed save under ``path``, possibly raised in
    a Ray worker) comes from a full filesystem, else None. torch reports a full disk only as a failed
    write (``basic_ios::clear: iostream error``, ``file write failed``); such a failure counts as disk
    full when the filesystem holding ``path`` has almost nothing left."""
    nospace = any(isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) for e in _chain(exc))
    text = " ".join(str(e) for e in _chain(exc)).lower()
    probe = path
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    try:
        usage = shutil.disk_usage(probe or "/")
    except OSError:
        usage = None
    nearly_full = usage is not None and usage.free < max(256 << 20, usage.total // 100)
    if not (nospace or (nearly_full and any(s in text for s in _WRITE_FAILED))):
        return None
    where = f" ({_human(usage.free)} free of {_human(usage.total)})" if usage is not None else ""
    return f"no space left on {path}{where}"


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
