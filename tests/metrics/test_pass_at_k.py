"""Unbiased pass@k: the estimator against hand-computed values, the per-benchmark aggregation over
verl's validation lists, and the trainer hook that logs it next to verl's own metrics."""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf

from verl_ext.core.config import ConfigError
from verl_ext.metrics.pass_at_k import parse_pass_at_k_setting, pass_at_k, pass_at_k_metrics


@pytest.mark.parametrize(
    "n,c,k,expected",
    [
        (16, 1, 16, 1.0),  # verl's bootstrap best@16 gives 1 - (15/16)^16 = 0.644 here
        (16, 1, 1, 1 / 16),
        (16, 1, 8, 0.5),  # 1 - C(15,8)/C(16,8) = 1 - 6435/12870
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (5, 2, 4, 1.0),  # only 3 wrong answers: any 4 contain a correct one
        (4, 0, 4, 0.0),
        (4, 4, 1, 1.0),
        (10, 3, 3, 1 - 35 / 120),  # 1 - C(7,3)/C(10,3)
    ],
)
def test_estimator_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_estimator_equals_the_binomial_formula_and_pass1_is_the_mean():
    for n in range(1, 20):
        for c in range(n + 1):
            assert pass_at_k(n, c, 1) == pytest.approx(c / n)
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))


def test_bootstrap_is_not_pass_at_k():
    assert 1 - (15 / 16) ** 16 == pytest.approx(0.644, abs=1e-3)
    assert pass_at_k(16, 1, 16) - (1 - (15 / 16) ** 16) > 0.35


@pytest.mark.parametrize("n,c,k", [(4, 1, 5), (4, 1, 0), (4, 5, 1), (4, -1, 1)])
def test_estimator_rejects_impossible_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def _lists():
    # math500: prompt p1 has 1/4 correct, p2 has 0/4; amc23: q1 4/4, q2 2/4 with one session missing
    rows = [("math500", "p1", a) for a in (1, 0, 0, 0)] + [("math500", "p2", a) for a in (0, 0, 0, 0)]
    rows += [("amc23", "q1", a) for a in (1, 1, 1, 1)] + [("amc23", "q2", a) for a in (1, 0, 1)]
    ds, uid, acc = map(list, zip(*rows))
    expected = {("math500", "p1"): 4, ("math500", "p2"): 4, ("amc23", "q1"): 4, ("amc23", "q2"): 4}
    return ds, uid, acc, expected


def test_metrics_per_benchmark():
    ds, uid, acc, expected = _lists()
    out = pass_at_k_metrics(ds, uid, acc, [1, 2, 4], expected_counts=expected)
    assert out["val-core/math500/acc/pass@1"] == pytest.approx((1 / 4 + 0) / 2)
    assert out["val-core/math500/acc/pass@2"] == pytest.approx((1 - math.comb(3, 2) / math.comb(4, 2)) / 2)
    assert out["val-core/math500/acc/pass@4"] == pytest.approx(0.5)
    # q2: the missing 4th session counts as wrong -> n=4, c=2
    assert out["val-core/amc23/acc/pass@1"] == pytest.approx((1 + 2 / 4) / 2)
    assert out["val-core/amc23/acc/pass@2"] == pytest.approx((1 + (1 - 1 / 6)) / 2)
    assert out["val-core/amc23/acc/pass@4"] == pytest.approx(1.0)
    assert len(out) == 6


def test_metrics_skip_short_prompts_and_missing_acc():
    ds, uid, acc, _ = _lists()
    # without expected counts q2 has only 3 samples (2 correct): left out of pass@4, kept in pass@1
    out = pass_at_k_metrics(ds, uid, acc, [1, 4])
    assert out["val-core/amc23/acc/pass@4"] == pytest.approx(1.0)  # q1 only
    assert out["val-core/amc23/acc/pass@1"] == pytest.approx((1 + 2 / 3) / 2)
    assert out["val-core/math500/acc/pass@4"] == pytest.approx(0.5)
    assert "val-core/math500/acc/pass@8" not in pass_at_k_metrics(ds, uid, acc, [8])
    # samples without acc (None) are not counted
    out = pass_at_k_metrics(["a", "a", "b"], ["u", "u", "v"], [1.0, None, None], [1])
    assert out == {"val-core/a/acc/pass@1": 1.0}
    with pytest.raises(ValueError):
        pass_at_k_metrics(["a"], ["u", "v"], [1.0], [1])


@pytest.mark.parametrize("value,expected", [(None, ()), (4, (4,)), ([16, 1, 4, 4], (1, 4, 16))])
def test_setting(value, expected):
    assert parse_pass_at_k_setting(value) == expected


@pytest.mark.parametrize("value", [0, [1, 0], ["4"], [1.5], True, "abc", {"k": 1}])
def test_bad_setting_names_the_key(value):
    with pytest.raises(ConfigError, match="trainer.val_pass_at_k"):
        parse_pass_at_k_setting(value if value != "abc" else 3.5)


# ------------------------------------------------------------------ the trainer hook (verl v1)
def _bare_trainer(n: int, extra=None):
    from verl_ext.workers.trainer import GXPOTrainerSync

    trainer = object.__new__(GXPOTrainerSync)  # only the config is read by the hook
    cfg = {"actor_rollout_ref": {"rollout": {"val_kwargs": {"n": n}}}, "trainer": {}}
    if extra is not None:
        cfg["trainer"]["val_pass_at_k"] = extra
    trainer.config = OmegaConf.create(cfg)
    return trainer


def test_trainer_hook_adds_pass_at_k_to_verls_validation_metrics():
    ds, uid, acc, expected = _lists()
    infos = {"reward": [float(a) for a in acc], "acc": [float(a) for a in acc], "pred": ["x"] * len(acc)}
    metrics = _bare_trainer(4, extra=[2])._val_metrics_update(ds, uid, infos, [1] * len(acc), expected_acc_counts=expected)
    # verl's own metrics are still there (mean@4 = pass@1, best@4 is its bootstrap)
    assert metrics["val-core/math500/acc/mean@4"] == pytest.approx(metrics["val-core/math500/acc/pass@1"])
    assert "val-core/math500/acc/best@4/mean" in metrics
    assert metrics["val-core/math500/acc/pass@4"] == pytest.approx(0.5)
    assert metrics["val-core/math500/acc/best@4/mean"] < 0.5  # the bootstrap underestimates it
    assert metrics["val-core/amc23/acc/pass@2"] == pytest.approx((1 + 5 / 6) / 2)
    assert {k for k in metrics if "/pass@" in k} == {
        f"val-core/{d}/acc/pass@{k}" for d in ("math500", "amc23") for k in (1, 2, 4)
    }


def test_trainer_hook_without_acc_and_with_a_bad_setting():
    infos = {"reward": [1.0, 0.0]}
    metrics = _bare_trainer(2)._val_metrics_update(["a", "a"], ["u", "u"], infos, [])
    assert not any("/pass@" in k for k in metrics) and "val-core/a/reward/mean@2" in metrics
    with pytest.raises(ConfigError):
        _bare_trainer(2, extra=[0])._val_metrics_update(["a", "a"], ["u", "u"], {"acc": [1.0, 0.0]}, [])
