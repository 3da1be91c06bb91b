"""A guard around the user's reward function: a reward that fails stops the run, once, clearly.

verl 0.9.1 loads ``reward.custom_reward_function`` (``path``, ``name``, ``reward_kwargs``) in each
reward-loop worker (a Ray actor, ``verl.experimental.reward_loop.RewardLoopWorker``) and calls it
once per sample from its reward manager (``naive`` by default). Left alone, a function that raises
is logged by the agent loop once per sample (128 tracebacks a step here) and the run ends on an
unrelated error later; a function that returns NaN poisons the advantages and every update is
skipped, and the run "finishes".

:func:`install` (on the driver, before Ray) checks the function can be loaded, then points
``custom_reward_function`` at this module's :func:`compute_score` (or :func:`compute_score_async`
for an ``async def`` function), with the user's ``path``/``name`` and the ``reward.non_finite``
policy in ``reward_kwargs[TARGET_KEY]``; every reward manager keeps working unchanged. In the worker,
the guard calls the user's function and:

* on an exception, records it (the first one's traceback, and a count) and returns NaN instead of
  raising -- so verl logs nothing per sample;
* on a non-finite (or non-numeric) score, records it; with ``reward.non_finite=zero`` it returns
  0.0 instead and counts it.

The trainer (:class:`verl_ext.workers.trainer.GXPOTrainerSync`) collects every worker's record with
:func:`take_report` after each batch is sampled and after validation scored, before anything is
trained on it, and :func:`check_reports` raises :class:`RewardFunctionError` /
:class:`NonFiniteRewardError` naming the function, its path and the sample counts; the driver prints
that as the run's last words.
"""

from __future__ import annotations

import inspect
import math
import numbers
import threading
import traceback
from typing import Any

GUARD_PATH = "pkg://verl_ext.rewards.guard"
TARGET_KEY = "_gxpo_reward_function"  # reward_kwargs entry: {"path", "name", "non_finite"}
NON_FINITE_POLICIES = ("error", "zero")
ZEROED_METRIC = "reward/non_finite_zeroed"


class RewardFault(RuntimeError):
    """The reward function failed; the run stops."""


class RewardFunctionError(RewardFault):
    """The reward function raised (or returned no number)."""


class NonFiniteRewardError(RewardFault):
    """The reward function returned non-finite scores under ``reward.non_finite=error``."""


# ------------------------------------------------------------------------------------ the worker side
_lock = threading.Lock()  # sync reward functions run in the reward manager's thread pool
_functions: dict[tuple[str, str], Any] = {}


def _empty() -> dict:
    return {"scored": 0, "raised": 0, "first_raise": None, "non_finite": 0, "first_non_finite": None, "zeroed": 0}


_record = _empty()


def _load(path: str, name: str):
    key = (path, name)
    fn = _functions.get(key)
    if fn is None:
        from verl.utils.import_utils import load_extern_object

        fn = _functions[key] = load_extern_object(module_path=path, object_name=name)
    return fn


def _sample(kwargs: dict) -> dict:
    return {k: str(kwargs.get(k))[:limit] for k, limit in (("data_source", 100), ("ground_truth", 100), ("solution_str", 200))}


def _raised(exc: BaseException, kwargs: dict) -> float:
    tb = exc.__traceback__
    if tb is not None and tb.tb_frame.f_code.co_filename == __file__ and tb.tb_next is not None:
        tb = tb.tb_next  # start at the user's function, not at this guard
    frames = traceback.format_exception(type(exc), exc, tb)
    with _lock:
        _record["scored"] += 1
        _record["raised"] += 1
        if _record["first_raise"] is None:
            _record["first_raise"] = {"type": type(exc).__name__, "message": str(exc), "traceback": "".join(frames),
                                      "sample": _sample(kwargs)}
    return float("nan")


def _score(result) -> Any:
    return result.get("score") if isinstance(result, dict) else result


def _finished(result, spec: dict, kwargs: dict):
    score = _score(result)
    number = isinstance(score, numbers.Real) and not isinstance(score, bool)
    if not number:
        try:  # numpy / torch scalars
            score = float(score)
            number = True
        except (TypeError, ValueError):
            pass
    if not number:
        what = f"returned {type(result).__name__} {repr(result)[:100]}; allowed: a number, or a dict with a numeric 'score'"
        return _raised(TypeError(what), kwargs)
    with _lock:
        _record["scored"] += 1
        if math.isfinite(float(score)):
            return result
        _record["non_finite"] += 1
        if _record["first_non_finite"] is None:
            _record["first_non_finite"] = {"score": repr(score), "sample": _sample(kwargs)}
        if spec.get("non_finite") != "zero":
            return result
        _record["zeroed"] += 1
    if isinstance(result, dict):
        return {**result, "score": 0.0}
    return 0.0


def compute_score(**kwargs):
    """The guard verl calls in place of a synchronous reward function (see the module docstring)."""
    spec = kwargs.pop(TARGET_KEY)
    try:
        result = _load(spec["path"], spec["name"])(**kwargs)
    except Exception as exc:  # noqa: BLE001  (any failure of user code is reported, once, by the trainer)
        return _raised(exc, kwargs)
    return _finished(result, spec, kwargs)


async def compute_score_async(**kwargs):
    """The guard for an ``async def`` reward function."""
    spec = kwargs.pop(TARGET_KEY)
    try:
        result = await _load(spec["path"], spec["name"])(**kwargs)
    except Exception as exc:  # noqa: BLE001
        return _raised(exc, kwargs)
    return _finished(result, spec, kwargs)


def take_report(_actor=None) -> dict:
    """This process's record since the last call (then reset). The trainer runs it inside each
    reward-loop worker with Ray's ``actor.__ray_call__.remote(take_report)``."""
    global _record
    with _lock:
        out, _record = _record, _empty()
    return out


# ------------------------------------------------------------------------------------ the driver side
def describe(spec: dict) -> str:
    return f"reward function {spec.get('name')!r} from {spec.get('path')} (reward.custom_reward_function)"


def non_finite_policy(config) -> str:
    """``reward.non_finite`` (default ``error``), validated."""
    from verl_ext.core.config import ConfigError

    reward = config.get("reward") or {}
    policy = str(reward.get("non_finite", "error"))
    if policy not in NON_FINITE_POLICIES:
        raise ConfigError("reward.non_finite", policy, " | ".join(NON_FINITE_POLICIES) +
                          " (error: stop the run; zero: score those samples 0 and count them in " + ZEROED_METRIC + ")")
    return policy


def installed_spec(config) -> dict | None:
    """The guarded function's ``{"path", "name", "non_finite"}`` once :func:`install` ran, else None."""
    crf = (config.get("reward") or {}).get("custom_reward_function") or {}
    if crf.get("path") != GUARD_PATH:
        return None
    spec = (crf.get("reward_kwargs") or {}).get(TARGET_KEY)
    return dict(spec) if spec is not None else None


def install(config) -> dict | None:
    """On the driver, before Ray: validate ``reward.non_finite``, load the user's reward function (a
    wrong path or name fails here, naming it) and route verl's call through the guard. Returns the
    guarded function's spec, or None when no custom reward function is configured. Idempotent."""
    from omegaconf import open_dict

    from verl_ext.core.config import ConfigError

    policy = non_finite_policy(config)
    spec = installed_spec(config)
    crf = config.reward.get("custom_reward_function")
    if spec is None:
        path = crf.get("path") if crf is not None else None
        if not path:
            return None
        spec = {"path": str(path), "name": str(crf.get("name") or "compute_score")}
    spec["non_finite"] = policy
    try:
        fn = _load(spec["path"], spec["name"])
    except Exception as e:  # noqa: BLE001  (FileNotFoundError, AttributeError, the module's own import errors)
        cause = e.__cause__ or e
        raise ConfigError("reward.custom_reward_function", f"path={spec['path']}, name={spec['name']}",
                          f"a module path (pkg://package.module, or a .py file) and the name of a function in it; "
                          f"loading it failed: {type(cause).__name__}: {cause}") from e
    if not callable(fn):
        raise ConfigError("reward.custom_reward_function.name", spec["name"], f"a function of {spec['path']}")
    with open_dict(config):
        crf.path = GUARD_PATH
        crf.name = "compute_score_async" if inspect.iscoroutinefunction(fn) else "compute_score"
        if crf.get("reward_kwargs") is None:
            crf.reward_kwargs = {}
        crf.reward_kwargs[TARGET_KEY] = spec
    return spec


def check_reports(reports: list[dict], spec: dict, where: str) -> dict:
    """Sum the workers' records; raise when the function raised, or returned non-finite scores under
    ``reward.non_finite=error``. Returns the sums (``zeroed``: scores set to 0)."""
    total = _empty()
    for r in reports:
        for k in ("scored", "raised", "non_finite", "zeroed"):
            total[k] += int(r.get(k, 0))
        for k in ("first_raise", "first_non_finite"):
            total[k] = total[k] or r.get(k)
    who = describe(spec)
    if total["raised"]:
        first = total["first_raise"]
        raise RewardFunctionError(
            f"the {who} failed on {total['raised']} of {total['scored']} samples scored ({where}). The first "
            f"failure, on sample {first['sample']}:\n{first['traceback'].rstrip()}\n"
            f"{first['type']}: {first['message']}  <- raised by the {who}")
    if total["non_finite"] and spec.get("non_finite") != "zero":
        first = total["first_non_finite"]
        raise NonFiniteRewardError(
            f"the {who} returned a non-finite score ({first['score']}) for {total['non_finite']} of {total['scored']} "
            f"samples ({where}; first: {first['sample']}). reward.non_finite=error stops the run before training on "
            f"them; reward.non_finite=zero scores them 0 and counts them in the metric {ZEROED_METRIC}.")
    return total
