"""The reward guard (verl_ext/rewards/guard.py), called the way verl's reward manager calls it (no Ray).

The real runs -- a reward that raises, one that returns NaN -- are in tests/recipe/test_e2e_faults.py.
"""

from __future__ import annotations

import asyncio
import math

import pytest
from hydra import compose, initialize_config_module

from verl.trainer.ppo.reward import get_custom_reward_fn
from verl_ext.core.config import ConfigError
from verl_ext.rewards import guard
from verl_ext.workers.update_check import AppliedUpdates, NoUpdateApplied

USER_REWARDS = '''
import math

def raises(data_source, solution_str, ground_truth, extra_info=None, **kw):
    raise ValueError(f"cannot parse {solution_str!r}")

def nan_score(data_source, solution_str, ground_truth, extra_info=None, **kw):
    return float("nan")

def nan_dict(data_source, solution_str, ground_truth, extra_info=None, **kw):
    return {"score": math.inf, "acc": 0.0}

def no_number(data_source, solution_str, ground_truth, extra_info=None, **kw):
    return None

def fine(data_source, solution_str, ground_truth, extra_info=None, scale=1.0, **kw):
    return scale * float(solution_str == ground_truth)

async def fine_async(data_source, solution_str, ground_truth, extra_info=None, **kw):
    return 1.0
'''


def _compose(*overrides):
    with initialize_config_module(config_module="recipe.gxpo.config", version_base=None):
        return compose("gxpo_trainer", overrides=list(overrides))


@pytest.fixture
def user_module(tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text(USER_REWARDS)
    guard.take_report()  # start from an empty record
    return str(path)


def _verl_fn(user_module, name, *extra):
    """The function verl's reward manager would call, after the driver installed the guard."""
    cfg = _compose(f"reward.custom_reward_function.path={user_module}", f"reward.custom_reward_function.name={name}", *extra)
    spec = guard.install(cfg)
    assert cfg.reward.custom_reward_function.path == guard.GUARD_PATH
    assert guard.install(cfg) == spec  # idempotent
    return get_custom_reward_fn(cfg), spec


def _score(fn, n, answer="3"):
    return [fn(data_source="arithmetic", solution_str=answer, ground_truth="3", extra_info={}) for _ in range(n)]


def test_a_raising_reward_is_reported_once_with_its_path_name_and_count(user_module):
    fn, spec = _verl_fn(user_module, "raises")
    assert all(math.isnan(s) for s in _score(fn, 5))  # nothing raised (nor logged) per sample
    reports = [guard.take_report(), guard.take_report()]  # the second: already collected
    with pytest.raises(guard.RewardFunctionError) as ei:
        guard.check_reports(reports, spec, "training step 1")
    msg = str(ei.value)
    assert "failed on 5 of 5 samples scored (training step 1)" in msg and msg.count("Traceback") == 1
    last = msg.splitlines()[-1]
    assert last.startswith("ValueError: cannot parse '3'") and "'raises'" in last and user_module in last


def test_non_finite_rewards_stop_by_default_and_are_zeroed_and_counted_on_request(user_module):
    fn, spec = _verl_fn(user_module, "nan_score")
    _score(fn, 3)
    with pytest.raises(guard.NonFiniteRewardError) as ei:
        guard.check_reports([guard.take_report()], spec, "training step 2")
    msg = str(ei.value)
    assert "'nan_score'" in msg and user_module in msg and "for 3 of 3 samples" in msg and "reward.non_finite=zero" in msg

    fn, spec = _verl_fn(user_module, "nan_dict", "reward.non_finite=zero")
    assert _score(fn, 4) == [{"score": 0.0, "acc": 0.0}] * 4
    total = guard.check_reports([guard.take_report()], spec, "training step 1")
    assert total["zeroed"] == 4 and total["non_finite"] == 4


def test_a_reward_that_returns_no_number_is_a_failure(user_module):
    fn, spec = _verl_fn(user_module, "no_number")
    _score(fn, 2)
    with pytest.raises(guard.RewardFunctionError, match="returned NoneType None; allowed: a number"):
        guard.check_reports([guard.take_report()], spec, "validation at step 0")


def test_good_rewards_pass_through_with_their_kwargs(user_module):
    fn, spec = _verl_fn(user_module, "fine", "+reward.custom_reward_function.reward_kwargs.scale=2.0")
    assert _score(fn, 2) == [2.0, 2.0] and _score(fn, 1, answer="4") == [0.0]
    assert guard.check_reports([guard.take_report()], spec, "x")["scored"] == 3
    fn, _ = _verl_fn(user_module, "fine_async")
    assert asyncio.run(fn(data_source="a", solution_str="1", ground_truth="1", extra_info={})) == 1.0


def test_bad_settings_are_refused_on_the_driver(user_module):
    with pytest.raises(ConfigError, match=r"reward\.non_finite='ignore': allowed error \| zero"):
        guard.install(_compose("reward.non_finite=ignore"))
    with pytest.raises(ConfigError, match=r"reward\.custom_reward_function=.*name=no_such_fn"):
        guard.install(_compose(f"reward.custom_reward_function.path={user_module}", "reward.custom_reward_function.name=no_such_fn"))
    with pytest.raises(ConfigError, match="Custom module file not found"):
        guard.install(_compose("reward.custom_reward_function.path=/nowhere/r.py"))


def test_a_launch_that_applied_no_update_is_an_error():
    seen = AppliedUpdates("gxpo")
    for step in (1, 2):
        seen.observe(step, {"gxpo/updates": 2 * step, "gxpo/skipped_updates": 2 * step})
    assert isinstance(seen.verdict(), NoUpdateApplied) and "every update of the gxpo rule was skipped" in str(seen.verdict())
    ok = AppliedUpdates("grpo")
    ok.observe(1, {"grpo/updates": 2, "grpo/skipped_updates": 1})
    assert ok.verdict() is None
    resumed = AppliedUpdates("gxpo")  # resumed at step 5: the counters carry the earlier launch's updates
    resumed.observe(5, {"gxpo/updates": 10, "gxpo/skipped_updates": 0, "actor/grad_norm": float("nan")})
    resumed.observe(6, {"gxpo/updates": 12, "gxpo/skipped_updates": 2, "actor/grad_norm": float("nan")})
    assert resumed.verdict() is not None
    resumed.observe(7, {"gxpo/updates": 14, "gxpo/skipped_updates": 3})
    assert resumed.verdict() is None
    assert AppliedUpdates("gxpo").verdict() is None  # no training step (val_only): nothing to judge
