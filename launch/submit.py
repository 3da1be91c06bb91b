"""Submit ONE GXPO/SFPO/GRPO training run to a Ray cluster through Ray's Jobs API.

    python -m launch.submit --name NAME [--address A] [--env K=V ...] [--log-dir DIR]
                            [--dry-run] [--wait] -- override1 override2 ...

The job runs ``python -m recipe.gxpo.main_gxpo <overrides>`` with the project root uploaded as the
job's ``working_dir`` (minus ``.git``, ``.venv``, outputs, checkpoints, data, wandb, ...).

* ``--address``: the Ray dashboard (Jobs API) address; default ``$RAY_ADDRESS`` or
  ``http://127.0.0.1:8265``. A bare ``host:port`` gets ``http://`` prepended.
* ``--env K=V`` (repeatable) sets a variable in the job; ``--env K`` copies ``K`` from the local
  environment. Without ``--no-env-passthrough`` the job also inherits, when set locally, the
  variables listed in ``PASSTHROUGH_VARS`` and those starting with ``PASSTHROUGH_PREFIXES``
  (``VLLM_*``, ``NCCL_*``, ``HF_*``, ...), except secret-looking names (``*KEY*``, ``*TOKEN*``,
  ``*SECRET*``, ``*PASSWORD*``), which only travel when named with ``--env``. ``WANDB_MODE``
  defaults to ``offline``. Secret-looking values are redacted in ``--dry-run`` output.
* ``trainer.experiment_name=<name>`` is added unless an override sets it or ``--keep-experiment-name``
  is given (then the config's name stands: ``conf/experiment/paper_math.yaml`` builds a unique one).
  The experiment name also names verl's checkpoint directory, so two runs must never share it.
* ``--log-dir DIR`` (default ``$GXPO_LOG_DIR``; must be shared storage the cluster's nodes see) is
  required (unless an override sets ``trainer.default_local_dir``): the run's directory is
  ``DIR/<name>/`` and the job gets ``trainer.default_local_dir=DIR/<name>``, so verl's checkpoints
  (``global_step_N/``), the metrics file ``launch.report`` reads (``metrics-<stamp>.jsonl``, one per
  submission, written by ``recipe.gxpo.main_gxpo``) and wandb's files (``wandb/``, offline unless
  ``WANDB_MODE`` is set) all land there -- never in Ray's temporary copy of the working dir. Hydra
  writes its config to ``DIR/<name>/hydra/<stamp>/.hydra/`` and this script saves
  ``DIR/<name>/launch-<stamp>.json`` (the submitted job). Submitting the same ``--name`` again
  resumes that run from its latest checkpoint (``trainer.resume_mode=auto``), e.g. with more
  ``trainer.total_training_steps``.
* ``submission_id`` is the sanitized run name (``--submission-id`` to set it, ``--unique-id`` to append
  a timestamp). When the cluster already has a finished job with that id (a resubmission), the id
  gets a timestamp; a run that still has a PENDING/RUNNING job is refused (two jobs must never
  write one run directory).
* ``--dry-run`` prints the exact ``submit_job`` keyword arguments as JSON on stdout and exits 0
  without contacting Ray.
* ``--wait`` tails the job's logs until it ends; the exit status is 0 only if the job SUCCEEDED.
* A job whose GPUs other jobs on the cluster hold waits for them (its driver polls Ray, printing what
  it waits for, up to ``trainer.resource_wait_s``, default a day; then it fails saying so) instead
  of failing in verl's resource check; a job larger than the whole cluster fails at once
  (``verl_ext/workers/resource_queue.py``). Jobs sharing a cluster are isolated: each has its own
  TransferQueue (``verl_ext/platform/tq_scope.py``).
* Jobs API calls that fail transiently ("No available agent to submit job", a 5xx answer, a dropped
  connection) are retried with exponential backoff (1 s doubling to 30 s, 8 tries); other errors are
  reported at once.
* The gated Llama 3.2 models need a Hugging Face token on the cluster: secrets never travel
  unnamed, so pass ``--env HF_TOKEN`` (copies it from here); a job for a ``llama`` model without it
  gets a note on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from launch import runmeta
from recipe.gxpo import run_layout

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
ENTRY_MODULE = "recipe.gxpo.main_gxpo"

# gitignore-style patterns relative to the working_dir (a leading "/" anchors to the project root).
DEFAULT_EXCLUDES = [
    "/.git",
    "/.venv",
    "/venv",
    "/outputs",
    "/multirun",
    "/checkpoints",
    "/data",
    "/wandb",
    "/runs",
    "/logs",
    "/.whl",
    "/.gl",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".hypothesis",
    "*.egg-info",
    "*.safetensors",
    "*.parquet",
]

PASSTHROUGH_VARS = (
    "WANDB_MODE",
    "WANDB_PROJECT",
    "WANDB_ENTITY",
    "WANDB_DIR",
    "WANDB_BASE_URL",
    "TRANSFORMERS_OFFLINE",
    "TOKENIZERS_PARALLELISM",
    "CUDA_DEVICE_MAX_CONNECTIONS",
    "GLOO_SOCKET_IFNAME",
    "PYTORCH_CUDA_ALLOC_CONF",
)
PASSTHROUGH_PREFIXES = ("VLLM_", "NCCL_", "TORCH_NCCL_", "HF_", "VERL_")
_SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.I)
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}

_OVERRIDE = re.compile(r"^(?:~[\w.@/\-]+(?:=.*)?|\+{0,2}[\w.@/\-\[\]]+=.*)$", re.S)


class LaunchError(ValueError):
    """A bad argument: the message says what and why."""


def is_secret(name: str) -> bool:
    """A secret-looking name (``*KEY*``, ``*TOKEN*``, ...), except the listed pass-through variables
    (``TOKENIZERS_PARALLELISM`` is no token)."""
    return name not in PASSTHROUGH_VARS and bool(_SECRET.search(name))


GATED_MODEL_TOKEN = "HF_TOKEN"


def gated_model_note(jobs: Sequence[Mapping[str, Any]]) -> str | None:
    """A note when a job trains a gated model (Llama 3.2) without ``HF_TOKEN`` in its environment
    (secrets travel only when named with ``--env``), else None."""
    runs = [j.get("metadata", {}).get("run_name", j.get("submission_id")) for j in jobs
            if "llama" in str(j.get("metadata", {}).get("model", "")).lower()
            and GATED_MODEL_TOKEN not in j.get("runtime_env", {}).get("env_vars", {})]
    if not runs:
        return None
    return (f"note: {', '.join(runs[:3])}{' ...' if len(runs) > 3 else ''} train(s) the gated Llama 3.2, which "
            f"needs a Hugging Face token on the cluster; secrets travel only when named: add --env {GATED_MODEL_TOKEN} "
            "(copies it from here), unless the cluster's nodes have the model or a token already")


def normalize_address(address: str | None) -> str:
    address = (address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS).strip()
    if not re.match(r"^[a-z][a-z0-9+.\-]*://", address):
        address = "http://" + address
    return address


def parse_env(items: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``K=V`` sets K; a bare ``K`` copies K from the local environment (an error when unset)."""
    environ = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for item in items or ():
        if "=" in item:
            key, value = item.split("=", 1)
        else:
            key = item
            if key not in environ:
                raise LaunchError(f"--env {key}: not set in the local environment (use --env {key}=VALUE)")
            value = environ[key]
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise LaunchError(f"--env {item!r}: {key!r} is not a valid environment variable name")
        out[key] = value
    return out


def passthrough_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    environ = os.environ if environ is None else environ
    out = {}
    for key, value in environ.items():
        if is_secret(key):
            continue
        if key in PASSTHROUGH_VARS or key.startswith(PASSTHROUGH_PREFIXES):
            out[key] = value
    return out


def validate_overrides(overrides: Sequence[str]) -> list[str]:
    bad = [o for o in overrides if not _OVERRIDE.match(o)]
    if bad:
        raise LaunchError(
            "not Hydra overrides (expected key=value, +key=value or ~key): "
            + ", ".join(repr(b) for b in bad)
            + " -- put launcher flags before '--' and overrides after it"
        )
    return list(overrides)


def _has_key(overrides: Sequence[str], key: str) -> bool:
    for ov in overrides:
        kv = runmeta.split_override(ov)
        if kv and kv[0] == key:
            return True
    return False


def make_submission_id(name: str, unique: bool = False, now: _dt.datetime | None = None) -> str:
    sid = runmeta.sanitize(name)
    if not sid:
        raise LaunchError(f"--name {name!r}: needs at least one letter or digit")
    if unique:
        sid += "-" + (now or _dt.datetime.now()).strftime(run_layout.STAMP_FORMAT)
    return sid


def build_job(
    name: str,
    overrides: Sequence[str] = (),
    *,
    env: Mapping[str, str] | None = None,
    env_passthrough: bool = True,
    environ: Mapping[str, str] | None = None,
    log_dir: str | None = None,
    submission_id: str | None = None,
    unique_id: bool = False,
    python: str = "python",
    module: str = ENTRY_MODULE,
    working_dir: str | os.PathLike | None = None,
    extra_excludes: Sequence[str] = (),
    entrypoint_num_cpus: float | None = None,
    entrypoint_num_gpus: float | None = None,
    metadata: Mapping[str, str] | None = None,
    now: _dt.datetime | None = None,
    set_experiment_name: bool = True,
    require_run_dir: bool = False,
) -> dict[str, Any]:
    """The keyword arguments of ``JobSubmissionClient.submit_job`` for one run: names, the run
    directory's overrides, the job's environment, its metadata, then the job itself."""
    now = now or _dt.datetime.now()
    stamp = now.strftime(run_layout.STAMP_FORMAT)
    run_name, sid = _job_names(name, submission_id, unique_id, now)
    overrides = validate_overrides(list(overrides))
    if set_experiment_name and not _has_key(overrides, "trainer.experiment_name"):
        overrides.append(f"trainer.experiment_name={run_name}")
    wd = Path(working_dir or PROJECT_ROOT).resolve()
    run_dir = _run_dir(log_dir, run_name, overrides, require_run_dir)
    overrides += _run_dir_overrides(run_dir, overrides, stamp)
    excludes = list(DEFAULT_EXCLUDES) + list(extra_excludes) + _log_dir_excludes(log_dir, wd)
    job_env = job_environment(env, env_passthrough, environ)
    job: dict[str, Any] = {
        "entrypoint": shlex.join([python, "-m", module, *overrides]),
        "submission_id": sid,
        "runtime_env": {"working_dir": str(wd), "excludes": excludes, "env_vars": job_env},
        "metadata": job_metadata(run_name, overrides, stamp, run_dir, metadata),
    }
    if entrypoint_num_cpus is not None:
        job["entrypoint_num_cpus"] = entrypoint_num_cpus
    if entrypoint_num_gpus is not None:
        job["entrypoint_num_gpus"] = entrypoint_num_gpus
    return job


def _job_names(name: str, submission_id: str | None, unique_id: bool, now: _dt.datetime) -> tuple[str, str]:
    """(run name, submission id), both checked."""
    if not name or not str(name).strip():
        raise LaunchError("--name is required and must not be empty")
    sid = submission_id or make_submission_id(name, unique_id, now)
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", sid):
        raise LaunchError(f"--submission-id {sid!r}: use only letters, digits, '_', '.', '-'")
    return runmeta.sanitize(name), sid


def _run_dir(log_dir: str | None, run_name: str, overrides: Sequence[str], required: bool) -> Path | None:
    """``<log dir>/<run name>`` (None without a log dir; an error when one is required and no
    override sets ``trainer.default_local_dir``)."""
    if log_dir:
        return Path(log_dir).expanduser().resolve() / run_name
    if required and not _has_key(overrides, "trainer.default_local_dir"):
        raise LaunchError("--log-dir (or $GXPO_LOG_DIR) is required: a shared directory for the run's checkpoints, "
                          "metrics and wandb files (without it they would land in Ray's temporary copy of the "
                          "working dir); or set trainer.default_local_dir=/shared/path/<run> yourself")
    return None


def _run_dir_overrides(run_dir: Path | None, overrides: Sequence[str], stamp: str) -> list[str]:
    """The overrides that put the run's outputs (checkpoints, metrics, Hydra's config) in ``run_dir``."""
    out = []
    if run_dir is not None:
        if not _has_key(overrides, "trainer.default_local_dir"):
            out.append(f"trainer.default_local_dir={run_dir}")
        if not _has_key(overrides, "hydra.run.dir"):
            out.append(f"hydra.run.dir={run_dir / 'hydra' / stamp}")
    return out


def _log_dir_excludes(log_dir: str | None, working_dir: Path) -> list[str]:
    """A log dir inside the project must not be uploaded with the code."""
    if not log_dir:
        return []
    try:
        return ["/" + Path(log_dir).expanduser().resolve().relative_to(working_dir).as_posix()]
    except ValueError:
        return []


def job_environment(env: Mapping[str, str] | None, passthrough: bool,
                    environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The job's environment variables: pass-through ones (unless disabled), ``WANDB_MODE=offline``
    by default, then the explicit ``--env`` ones, which win."""
    job_env: dict[str, str] = {"PYTHONUNBUFFERED": "1"}
    if passthrough:
        job_env.update(passthrough_env(environ))
    job_env.setdefault("WANDB_MODE", "offline")
    job_env.update(env or {})
    return job_env


def job_metadata(run_name: str, overrides: Sequence[str], stamp: str, run_dir: Path | None,
                 extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The job's metadata: run name, launcher, stamp, overrides, the run's parsed fields
    (``launch.runmeta``), its directory, then ``extra``."""
    meta = runmeta.merge_meta(runmeta.meta_from_overrides(overrides), runmeta.meta_from_name(run_name))
    job_meta = {"run_name": run_name, "launcher": "launch.submit", "stamp": stamp, "overrides": json.dumps(list(overrides))}
    for key in runmeta.META_FIELDS:
        if key in meta:
            job_meta[key] = str(meta[key])
    if run_dir is not None:
        job_meta["run_dir"] = str(run_dir)
    job_meta.update({k: str(v) for k, v in (extra or {}).items()})
    return job_meta


def redacted(job: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``job`` with secret-looking env values replaced by ``***``."""
    out = json.loads(json.dumps(job))
    env = out.get("runtime_env", {}).get("env_vars", {})
    for key in env:
        if is_secret(key):
            env[key] = "***"
    return out


def _use_ray_auth_token_if_present() -> None:
    """Send the cluster's auth token when one is available locally, as ``ray start`` does.

    Ray >= 2.5x enables token authentication on ``ray start --head`` when a token exists
    (``$RAY_AUTH_TOKEN``, ``$RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``), but the Jobs SDK only
    sends it when ``RAY_AUTH_MODE=token`` is set. An explicit ``RAY_AUTH_MODE`` is left alone; a
    cluster without token auth ignores the header."""
    if os.environ.get("RAY_AUTH_MODE"):
        return
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # older Ray: no token auth
        return
    try:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    except Exception as exc:  # never block a submission on this
        print(f"[launch.submit] could not set up Ray token auth: {exc}", file=sys.stderr)


def make_client(address: str):
    from ray.job_submission import JobSubmissionClient

    _use_ray_auth_token_if_present()
    try:
        return call_retrying(JobSubmissionClient, address, what=f"connecting to {address}", tries=4)
    except Exception as exc:  # connection refused, wrong port, version check ...
        raise RuntimeError(f"cannot reach the Ray Jobs API at {address}: {exc}") from exc


def save_launch_record(job: Mapping[str, Any], address: str) -> Path | None:
    """Write ``<run_dir>/launch-<stamp>.json`` next to the run's logs (only with --log-dir)."""
    run_dir = job.get("metadata", {}).get("run_dir")
    if not run_dir:
        return None
    stamp = job.get("metadata", {}).get("stamp") or run_layout.timestamp()
    path = Path(run_dir) / f"launch-{stamp}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"address": address, "job": redacted(job)}, indent=2) + "\n")
    except OSError as exc:  # the log dir may only exist on the cluster: the job is submitted anyway
        print(f"[launch.submit] could not write {path}: {exc}", file=sys.stderr)
        return None
    return path


def _field(obj, name: str):
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def active_jobs_of_run(client, job: Mapping[str, Any]) -> list[str]:
    """Submission ids of the cluster's PENDING/RUNNING jobs that write the same run directory."""
    run_dir = job.get("metadata", {}).get("run_dir")
    run_name = job.get("metadata", {}).get("run_name")
    out = []
    for other in call_retrying(client.list_jobs, what="listing the cluster's jobs"):
        meta = _field(other, "metadata") or {}
        same = (run_dir and meta.get("run_dir") == run_dir) or (not run_dir and meta.get("run_name") == run_name)
        status = str(getattr(_field(other, "status"), "value", _field(other, "status"))).split(".")[-1].upper()
        if same and status not in TERMINAL:
            out.append(_field(other, "submission_id"))
    return out


def submit(client, job: dict[str, Any]) -> str:
    """Submit ``job``. A run with a job still PENDING/RUNNING is refused; a finished job holding the
    submission id (a resubmission, which resumes the run) makes the id ``<id>-<stamp>``."""
    active = active_jobs_of_run(client, job)
    if active:
        raise RuntimeError(f"run {job['metadata'].get('run_name')!r} still has a pending or running job "
                           f"({', '.join(map(str, active))}); two jobs must not write one run directory "
                           f"(stop it with: ray job stop {active[0]})")
    try:
        return _submit_retrying(client, job)
    except RuntimeError as exc:
        msg = str(exc).lower()
        if "already exists" not in msg and "already been used" not in msg:
            raise
        sid = job["submission_id"]
        if _is_this_submission(client, job):  # a retried request that had reached the cluster
            return sid
        if job_status(client, sid) not in TERMINAL:
            raise RuntimeError(f"a job with submission id {sid!r} is still pending or running on this cluster") from exc
        job["submission_id"] = f"{sid}-{job['metadata'].get('stamp') or run_layout.timestamp()}"
        print(f"[launch.submit] {sid!r} already ran on this cluster: resubmitting as {job['submission_id']!r} "
              "(same run directory, resumes from its latest checkpoint)", file=sys.stderr)
        return _submit_retrying(client, job)


#: what a Jobs API answer says when trying again later can help: the job agent of a (re)starting head
#: is not up yet ("No available agent to submit job, please try again later"), a 5xx, a dropped
#: connection
_TRANSIENT = re.compile(r"try again later|no available agent|status code 5\d\d|connection (?:refused|reset|aborted)"
                        r"|max retries exceeded|temporarily unavailable|timed? ?out", re.I)
RETRY_TRIES = 8  # waits 1, 2, 4, ..., 30 s: about 2.5 minutes in all
RETRY_MAX_WAIT_S = 30.0


def is_transient(exc: BaseException) -> bool:
    """True for a Jobs API error that a retry may cure (see ``_TRANSIENT``); bad requests are not."""
    try:
        import requests

        if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
            return True
    except ImportError:  # pragma: no cover - ray[default] depends on requests
        pass
    return isinstance(exc, (RuntimeError, ConnectionError, TimeoutError)) and bool(_TRANSIENT.search(str(exc)))


def call_retrying(fn, *args, what: str = "Jobs API call", tries: int = RETRY_TRIES, first_wait_s: float = 1.0,
                  sleep=None, **kwargs):
    """``fn(*args, **kwargs)``, retried with exponential backoff (1 s doubling, at most 30 s per wait)
    while it fails transiently (:func:`is_transient`); the last error propagates, saying how often
    it was tried."""
    wait_s = first_wait_s
    for attempt in range(1, tries + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt == tries:
                raise RuntimeError(f"{what} still failing after {tries} tries: {exc}") from exc
            print(f"[launch] {what} failed ({str(exc).strip()[:200]}); retry {attempt}/{tries - 1} in {wait_s:g} s",
                  file=sys.stderr, flush=True)
            (sleep or time.sleep)(wait_s)
            wait_s = min(2 * wait_s, RETRY_MAX_WAIT_S)
    raise AssertionError("unreachable")


def _is_this_submission(client, job: Mapping[str, Any]) -> bool:
    """True when the cluster's job with ``job``'s submission id is ``job`` itself (same run and stamp)."""
    try:
        info = call_retrying(client.get_job_info, job["submission_id"], what="job info")
    except Exception:
        return False
    meta, mine = _field(info, "metadata") or {}, job.get("metadata", {})
    return bool(mine.get("stamp")) and all(meta.get(k) == mine.get(k) for k in ("run_name", "stamp"))


def _submit_retrying(client, job: Mapping[str, Any]) -> str:
    return call_retrying(client.submit_job, what=f"submitting {job.get('submission_id')}", **job)


def job_status(client, sid: str) -> str:
    status = call_retrying(client.get_job_status, sid, what=f"status of {sid}")
    return str(getattr(status, "value", status)).split(".")[-1].upper()


def wait_for_job(client, sid: str, *, tail: bool = True, poll_s: float = 5.0, out=None) -> str:
    """Stream the job's logs (or poll) until it ends; return its final status name."""
    out = out or sys.stdout
    if tail:

        async def _tail():
            async for lines in client.tail_job_logs(sid):
                out.write(lines)
                out.flush()

        try:
            asyncio.run(_tail())
        except Exception as exc:  # log streaming is best effort: fall back to polling
            print(f"[launch.submit] log tailing stopped ({exc}); polling status", file=sys.stderr)
    while True:
        status = job_status(client, sid)
        if status in TERMINAL:
            return status
        time.sleep(poll_s)


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None, help="Ray dashboard / Jobs API address "
                   f"(default: $RAY_ADDRESS or {DEFAULT_ADDRESS})")
    p.add_argument("--env", action="append", default=[], metavar="K=V",
                   help="environment variable for the job; bare K copies it from here (repeatable). Secret-looking "
                        "names (*TOKEN*, *KEY*, ...) travel only this way: e.g. --env HF_TOKEN for the gated Llama 3.2")
    p.add_argument("--no-env-passthrough", action="store_true",
                   help="do not copy VLLM_*/NCCL_*/HF_*/WANDB_* ... variables from the local environment")
    p.add_argument("--log-dir", default=os.environ.get("GXPO_LOG_DIR"),
                   help="shared directory for run logs/configs read by launch.report (default: $GXPO_LOG_DIR)")
    p.add_argument("--keep-experiment-name", action="store_true",
                   help="do not set trainer.experiment_name=<run name>; the config's own name stands "
                        "(conf/experiment presets build a unique one)")
    p.add_argument("--python", default="python", help="python executable on the cluster (default: python)")
    p.add_argument("--module", default=ENTRY_MODULE, help=f"entry module (default: {ENTRY_MODULE})")
    p.add_argument("--working-dir", default=str(PROJECT_ROOT), help="directory uploaded as working_dir")
    p.add_argument("--exclude", action="append", default=[], help="extra working_dir exclude pattern")
    p.add_argument("--entrypoint-num-cpus", type=float, default=None)
    p.add_argument("--entrypoint-num-gpus", type=float, default=None)
    p.add_argument("--no-precheck", action="store_true",
                   help="do not compose and check each job's config here before submitting (launch.precheck)")
    p.add_argument("--dry-run", action="store_true", help="print the job JSON and exit without contacting Ray")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends; non-zero exit unless it SUCCEEDED")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m launch.submit",
        description="Submit one GXPO run to a Ray cluster (Ray Jobs API).",
        epilog="Everything after '--' is passed to recipe.gxpo.main_gxpo as Hydra overrides.",
    )
    p.add_argument("--name", required=True, help="run name (experiment name, submission id, log dir)")
    p.add_argument("--submission-id", default=None, help="explicit Ray submission id (default: from --name)")
    p.add_argument("--unique-id", action="store_true", help="append a timestamp to the submission id")
    add_common_args(p)
    p.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    return p


def job_from_args(args, name: str, overrides: Sequence[str], submission_id: str | None = None,
                  metadata: Mapping[str, str] | None = None) -> dict[str, Any]:
    return build_job(
        name,
        overrides,
        env=parse_env(args.env),
        env_passthrough=not args.no_env_passthrough,
        log_dir=args.log_dir,
        submission_id=submission_id,
        unique_id=getattr(args, "unique_id", False),
        python=args.python,
        module=args.module,
        working_dir=args.working_dir,
        extra_excludes=args.exclude,
        entrypoint_num_cpus=args.entrypoint_num_cpus,
        entrypoint_num_gpus=args.entrypoint_num_gpus,
        metadata=metadata,
        set_experiment_name=not args.keep_experiment_name,
        require_run_dir=True,
    )


def precheck(args, jobs: Sequence[Mapping[str, Any]]) -> None:
    """Compose and check every job's config on this machine (:mod:`launch.precheck`) unless
    ``--no-precheck``; a refusal becomes a :class:`LaunchError` (nothing is submitted). What the
    checks and the libraries they import print (vLLM logs its plugins to stdout when verl imports it)
    goes to stderr: stdout carries only the launcher's result, e.g. ``--dry-run``'s JSON."""
    if args.no_precheck:
        return
    from launch.precheck import PrecheckError, check_jobs

    try:
        with contextlib.redirect_stdout(sys.stderr):
            n = check_jobs(jobs, ENTRY_MODULE)
    except PrecheckError as exc:
        raise LaunchError(f"{exc} (nothing was submitted; --no-precheck skips this check)") from exc
    if n:
        print(f"[precheck] {n} config(s) compose and pass the entry point's checks", file=sys.stderr)


def main(argv: Sequence[str] | None = None, client=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    flags, overrides = split_argv(argv)
    parser = build_parser()
    args = parser.parse_args(flags)
    overrides = list(args.overrides) + overrides
    try:
        job = job_from_args(args, args.name, overrides, submission_id=args.submission_id)
        precheck(args, [job])
    except LaunchError as exc:
        parser.error(str(exc))
    if note := gated_model_note([job]):
        print(f"[launch.submit] {note}", file=sys.stderr)
    address = normalize_address(args.address)
    if args.dry_run:
        print(f"# dry run: would submit to {address}", file=sys.stderr)
        print(json.dumps(redacted(job), indent=2, sort_keys=True))
        return 0
    try:
        client = client or make_client(address)
        sid = submit(client, job)
    except RuntimeError as exc:
        print(f"launch.submit: error: {exc}", file=sys.stderr)
        return 1
    record = save_launch_record(job, address)
    print(f"submitted {sid} to {address}" + (f" (record: {record})" if record else ""))
    if not args.wait:
        print(f"follow it with: ray job logs --address {address} --follow {sid}")
        return 0
    try:
        status = wait_for_job(client, sid)
    except KeyboardInterrupt:
        print(f"\nstopped following {sid}; it keeps running (ray job stop --address {address} {sid})",
              file=sys.stderr)
        return 130
    print(f"job {sid} finished: {status}")
    return 0 if status == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main())
