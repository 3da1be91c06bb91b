"""Where one run's outputs live, and how runs are named: shared by the entry point and the launchers.

A run is one directory, ``trainer.default_local_dir``: verl's checkpoints (``global_step_N/``), the
metrics file ``launch.report`` reads (``metrics-<stamp>.jsonl``, one per launch because verl's file
logger truncates its file when it starts) and wandb's files (``wandb/``). The launchers set it to
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


def metrics_file(run_dir: str, stamp: str | None = None) -> str:
    return os.path.join(run_dir, f"metrics-{stamp or timestamp()}.jsonl")


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
