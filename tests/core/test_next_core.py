"""NExt's framework-free parts: rank-1 components, predictor fit, extrapolation of a known trajectory."""

from __future__ import annotations

import pytest
import torch
from helpers.proc_env import one_torch_thread

from verl_ext.core.config import ConfigError
from verl_ext.core.next import NExtConfig, fit_and_extrapolate, flat_cosine, rank1, rebuild


@pytest.fixture(autouse=True)
def _single_thread():
    with one_torch_thread():
        yield


def test_rank1_recovers_a_rank1_delta_with_a_fixed_sign():
    torch.manual_seed(0)
    u, v = torch.randn(7), torch.randn(5)
    d = 3.0 * torch.outer(u, v)
    p, q = rank1(d), rank1(-d)
    torch.testing.assert_close(rebuild(p, d.shape), d, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rebuild(q, d.shape), -d, rtol=1e-5, atol=1e-5)
    assert p["v"][p["v"].abs().argmax()] > 0 and q["v"][q["v"].abs().argmax()] > 0
    vec = torch.randn(4)
    torch.testing.assert_close(rebuild(rank1(vec), vec.shape), vec)


def _lora_trajectory(t: float, seed: int = 0):
    """LoRA-shaped A [r, in] and B [out, r] moving along fixed rank-1 directions, nonlinearly in t."""
    g = torch.Generator().manual_seed(seed)
    r, d_in, d_out = 4, 24, 16
    a0, b0 = torch.randn(r, d_in, generator=g) * 0.1, torch.zeros(d_out, r)
    ua, va = torch.randn(r, generator=g), torch.randn(d_in, generator=g)
    ub, vb = torch.randn(d_out, generator=g), torch.randn(r, generator=g)
    return {"lora_A": a0 + 0.01 * t ** 2 * torch.outer(ua, va), "lora_B": b0 + 0.05 * t ** 1.5 * torch.outer(ub, vb)}


def test_extrapolation_heads_to_the_known_continuation():
    n, h = 6, 2
    cfg = NExtConfig(enable=True, mode="online", history=n, horizon=h, interval=10, hidden=32, epochs=200, lr=1e-3)
    anchor = _lora_trajectory(0)
    window = [_lora_trajectory(t) for t in range(1, n + 1)]
    pred, cost = fit_and_extrapolate(anchor, window, cfg)
    future = _lora_trajectory(n + h)
    for k in anchor:
        true = future[k] - window[-1][k]
        cos, _ = flat_cosine({k: true}, {k: pred[k]})
        assert cos > 0.999, k  # the rank-1 direction of the continuation
        gap_before = (future[k] - window[-1][k]).norm()
        gap_after = (future[k] - (window[-1][k] + pred[k])).norm()
        assert gap_after < 0.5 * gap_before, k  # the jump lands much closer to where the run goes
    # cost is reported: one training row per tensor x component (u, s, v) x pair (n - h - 1 pairs)
    assert cost.predictor_params > 0 and cost.samples == 2 * 3 * (n - h - 1)
    assert cost.flops > 6 * cost.predictor_params * cfg.epochs and cost.seconds > 0
    # deterministic for a seed
    pred2, _ = fit_and_extrapolate(anchor, window, cfg)
    for k in pred:
        assert torch.equal(pred[k], pred2[k])


def test_too_short_window_is_refused():
    cfg = NExtConfig(enable=True, mode="online", history=4, horizon=2, interval=10)
    with pytest.raises(ValueError):
        fit_and_extrapolate(_lora_trajectory(0), [_lora_trajectory(t) for t in (1, 2, 3)], cfg)


@pytest.mark.parametrize(
    "kw,key",
    [
        ({"interval": 0}, "interval"),
        ({"mode": "online", "history": 3, "horizon": 2}, "history"),
        ({"mode": "online", "snapshot_every": 2, "interval": 11}, "interval"),
        ({"mode": "online", "snapshot_every": 5, "history": 6, "interval": 20}, "interval"),
        ({"mode": "both"}, "mode"),
        ({"loss": "huber"}, "loss"),
        ({"snapshot_every": 10, "extend_at": 155}, "extend_at"),
        ({"snapshot_every": 10, "horizon": 5, "extend_at": 50}, "extend_at"),
        ({"coef_grid": []}, "coef_grid"),
        ({"coef_grid": [1.0, -0.5]}, "coef_grid"),
        ({"coef": 0.0}, "coef"),
        ({"hidden": 1.5}, "hidden"),
        ({"lr": -1.0}, "lr"),
        ({"enable": 1}, "enable"),
    ],
)
def test_config_errors_name_key_value_allowed(kw, key):
    with pytest.raises(ConfigError) as e:
        NExtConfig(**kw)
    assert e.value.key == key and e.value.allowed
