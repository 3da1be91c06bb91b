"""Where one run's outputs live, and how runs are named: shared by the entry point and the launchers.

A run is one directory, ``trainer.default_local_dir``: verl's checkpoints (``global_step_N/``), the
metrics file ``launch.report`` reads (``metrics-<stamp>-<pid>.jsonl``, one per launch, created new
by the driver, because verl's file logger truncates its file when it starts), wandb's files
(``wandb/``) and the lock file (``.gxpo-run.lock``) a live run holds. The launchers set it to
``<log_dir>/<run name>``; a direct ``python -m recipe.gxpo.main_gxpo`` uses the config's value
(absolute, from the driver's working directory).

This module is framework-free (stdlib only) so that ``launch.*`` can import it without verl.
"""

from __future__ import annotations

import json
import os
import re
import time

# One timestamp format for every file the project names by time (metrics-, launch-, hydra/ dirs, ids).
STAMP_FORMAT = "%Y%m%d-%H%M%S"
STAMP_PATTERN = r"\d{8}-\d{6}"

_SAFE = re.compile(r"[^A-Za-z0-9_.\-]+")
# Ray puts a job's working_dir copy under <session>/runtime_resources/working_dir_files/
_RAY_JOB_CONFIG_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def timestamp(when: float | None = None) -> str:
    return time.strftime(STAMP_FORMAT, time.localtime(when))


def sanitize(text: str) -> str:
    """A string safe for Ray submission ids, file names and wandb names."""
    return _SAFE.sub("-", str(text)).strip("-")


# the lock file that marks a run directory as held by a live run (recipe/gxpo/run_lock.py)
LOCK_FILE = ".gxpo-run.lock"


def metrics_file(run_dir: str, stamp: str | None = None, pid: int | None = None) -> str:
    """``<run_dir>/metrics-<stamp>-<pid>.jsonl``: the launch's start time and driver pid, so two
    launches never share a name (names sort by start time)."""
    return os.path.join(run_dir, f"metrics-{stamp or timestamp()}-{os.getpid() if pid is None else pid}.jsonl")


def reserve_metrics_file(run_dir: str) -> str:
    """Create this launch's metrics file, empty, with a name no other file has (``O_EXCL``: a taken
    name gets a ``-<n>`` suffix); verl's file logger, which opens its file for writing, then only
    ever opens a file this launch created."""
    os.makedirs(run_dir, exist_ok=True)
    base = metrics_file(run_dir)[: -len(".jsonl")]
    for n in range(1000):
        path = f"{base}.jsonl" if n == 0 else f"{base}-{n}.jsonl"
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free metrics file name under {run_dir} ({base}*.jsonl)")


def lock_file(run_dir: str) -> str:
    return os.path.join(run_dir, LOCK_FILE)


# ------------------------------------------------------------------------------- reading metrics
# The one reader of a run's metrics: recipe.gxpo.summary, recipe.gxpo.compare and launch.report
# (sources.py) all read through these functions. A run directory may hold several metrics files
# (one per launch, whatever their suffix after "metrics"); they are segments of one run, read in
# name order (the stamp), a later segment winning on a repeated step (a resumed run re-logs steps).
METRICS_PREFIX = "metrics"
METRICS_SUFFIX = ".jsonl"
# the keys a simple JSONL line may carry its step under (verl's file logger uses "step" + "data")
STEP_KEYS = ("step", "_step", "training/global_step")


def is_metrics_file(name: str) -> bool:
    """Is ``name`` (a file name) one of a run directory's metrics segments?"""
    return name.startswith(METRICS_PREFIX) and name.endswith(METRICS_SUFFIX)


def metrics_files(run_dir: str) -> list[str]:
    """The metrics segments of ``run_dir``, oldest first (name order: the stamp)."""
    try:
        names = os.listdir(run_dir)
    except OSError:
        return []
    return [os.path.join(run_dir, n) for n in sorted(names) if is_metrics_file(n)
            and os.path.isfile(os.path.join(run_dir, n))]


def metrics_record(obj) -> tuple[object, dict] | None:
    """``(step, metrics)`` of one decoded line: verl's file logger (``{"step": s, "data": {...}}``) or
    a simple line (``{"step"|"_step"|"training/global_step": s, metric: value, ...}``); None when the
    line is not a dict or has no step. ``step`` is returned as logged (the caller converts it)."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("data"), dict) and "step" in obj:
        data = obj["data"]
        step = obj["step"] if obj["step"] is not None else data.get("training/global_step")
        return (step, data) if step is not None else None
    step = next((obj[k] for k in STEP_KEYS if k in obj), None)
    return (step, obj) if step is not None else None


def read_metrics_file(path: str) -> tuple[list[tuple[object, dict]], int]:
    """``([(step, metrics), ...], number of lines that were not JSON)`` of one JSONL file; a torn last
    line of a killed run is such a line."""
    records, bad = [], 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            rec = metrics_record(obj)
            if rec is not None:
                records.append(rec)
    return records, bad


def read_metrics(path: str) -> dict[int, dict]:
    """step -> every metric logged at that step, from one metrics file or from all the metrics
    segments of a run directory (later segments win on a repeated key of a step); steps ascending."""
    files = metrics_files(path) if os.path.isdir(path) else ([path] if os.path.isfile(path) else [])
    steps: dict[int, dict] = {}
    for f in files:
        for step, data in read_metrics_file(f)[0]:
            try:
                s = int(step)
            except (TypeError, ValueError):
                continue
            steps.setdefault(s, {}).update(data)
    return dict(sorted(steps.items()))


# ------------------------------------------------------------------------------------------- naming
# Hydra groups of conf/ whose option name is a run-name token as is.
NAME_GROUPS = ("base_model", "method", "experiment", "model")


def name_token(key: str, value: str) -> str:
    """The run-name token of one swept ``key=value``: the option name for a conf/ group or
    ``update_rule``; ``k<v>`` for ``.K``, ``a<v>`` for ``.alpha``, ``s<v>`` for a seed, else
    ``<last key segment><v>`` (``launch.runmeta`` parses these back)."""
    k = key.lstrip("+~")
    last = k.split(".")[-1]
    v = sanitize(str(value).strip("'\""))
    if k in NAME_GROUPS or last == "update_rule":
        return v
    if last == "K":
        return f"k{v}"
    if last == "alpha":
        return f"a{v}"
    if last in ("seed", "data_loader_seed"):
        return f"s{v}"
    return f"{sanitize(last)}{v}"


def job_suffix(swept: list[tuple[str, str]]) -> str:
    """``[(actor_rollout_ref.actor.gxpo.K, 3), (data.seed, 2)]`` -> ``k3_s2``."""
    return "_".join(name_token(k, v) for k, v in swept)


# ------------------------------------------------------------------------------------- checkpoints
def latest_checkpoint_step(ckpt_dir: str) -> int | None:
    """The step of the newest checkpoint verl would resume from (``resume_mode=auto``), or None."""
    tracker = os.path.join(ckpt_dir, "latest_checkpointed_iteration.txt")
    try:
        with open(tracker) as f:
            step = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return step if os.path.isdir(os.path.join(ckpt_dir, f"global_step_{step}")) else None


# ------------------------------------------------------------------------------------- Ray job copy
def ray_job_working_dir() -> str | None:
    """Inside a Ray job's driver that Ray started with a ``working_dir``: the directory of that copy
    (the driver's cwd, deleted or replaced with the next code upload or Ray session), else None."""
    raw = os.environ.get(_RAY_JOB_CONFIG_VAR)
    if not raw:
        return None
    try:
        runtime_env = json.loads(raw).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return None
    return os.getcwd() if runtime_env.get("working_dir") else None


def inside(path: str, root: str) -> bool:
    path, root = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([path, root]) == root
