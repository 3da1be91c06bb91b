"""Gate semantics, state round-trips, numerical guards (hypothesis) and config validation."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.core_problems import TinyMLP, make_closures, mlp_batch
from verl_ext.core import ConfigError, GXPOConfig, GXPORule, SFPOConfig, ZScoreGate, build_config, build_update_rule
from verl_ext.core.extrapolation import (
    geometric_scale,
    geometric_scale_,
    geometric_scale_reference,
    retention_ratio,
    retention_ratio_,
)

# ---------------------------------------------------------------------------------------------- gate


def test_warmup_only_fills_and_z_uses_buffer_before_value():
    g = ZScoreGate(window=5, warmup=3, threshold=3.0)
    for i, v in enumerate([1.0, 2.0, 3.0]):
        tripped, z = g.observe(v, i)
        assert not tripped and math.isnan(z)
    assert list(g.buffer) == [1.0, 2.0, 3.0]
    tripped, z = g.observe(2.0, 3)
    mu, sd = 2.0, math.sqrt(2.0 / 3.0)
    assert z == pytest.approx((2.0 - mu) / (sd + 1e-8))  # value not yet in the buffer
    assert not tripped and list(g.buffer) == [1.0, 2.0, 3.0, 2.0]


def test_trip_is_permanent_and_records_update():
    g = ZScoreGate(window=4, warmup=2, threshold=3.0)
    for i, v in enumerate([1.0, 1.1, 0.9, 1.0]):
        g.observe(v, i)
    tripped, z = g.observe(100.0, 7)
    assert tripped and z > 3 and not g.active and g.shutoff_update == 7
    assert g.buffer[-1] == 100.0  # appended after the test
    g.observe(1.0, 8)
    assert not g.active and g.shutoff_update == 7
    assert not g.begin_update(9)


def test_rolling_window_drops_old_values():
    g = ZScoreGate(window=3, warmup=2, threshold=1e9)
    for i in range(10):
        g.observe(float(i), i)
    assert list(g.buffer) == [7.0, 8.0, 9.0]


def test_never_and_fixed_modes():
    g = ZScoreGate(mode="never", window=3, warmup=2, threshold=0.1)
    for i in range(20):
        g.observe(float(10**i), i)
    assert g.active
    f = ZScoreGate(mode="fixed", window=3, warmup=2, shutoff_at=4)
    assert [f.begin_update(i) for i in range(6)] == [True] * 4 + [False] * 2
    assert f.shutoff_update == 4


def test_two_sided_gate_trips_on_drop():
    g = ZScoreGate(window=5, warmup=5, threshold=1.0, two_sided=True)
    for i, v in enumerate([2.0, 2.1, 1.9, 2.0, 2.05]):
        g.observe(v, i)
    tripped, z = g.observe(0.5, 5)
    assert tripped and z < -1


@pytest.mark.parametrize("split", [3, 12])  # mid-warm-up, and after shutoff
def test_state_roundtrip_continues_identically(split):
    cfg = {"K": 3, "warmup": 4, "window": 6, "z_threshold": 0.5}
    batches = [mlp_batch(seed=s) for s in range(16)]  # a fresh mini-batch per update, like RL steps
    cur = {"u": 0}

    def loss_of(m):
        def loss():
            x, y = batches[cur["u"]]
            return ((m(x) - y) ** 2).mean()

        return loss

    def run(n_total, resume_at=None):
        m = TinyMLP()
        opt = torch.optim.AdamW(m.parameters(), lr=3e-2)
        cg, st = make_closures(list(m.parameters()), loss_of(m), opt, clip=1.0)
        rule = GXPORule(m.parameters(), cfg)
        log = []
        for u in range(n_total):
            cur["u"] = u
            if resume_at is not None and u == resume_at:
                sd_rule, sd_opt, sd_m = rule.state_dict(), opt.state_dict(), m.state_dict()
                m = TinyMLP(seed=123)
                m.load_state_dict(sd_m)
                opt = torch.optim.AdamW(m.parameters(), lr=3e-2)
                opt.load_state_dict(sd_opt)
                cg, st = make_closures(list(m.parameters()), loss_of(m), opt, clip=1.0)
                rule = GXPORule(m.parameters(), cfg)
                rule.load_state_dict(sd_rule)
            log.append(rule.step(cg, st))
        return [p.detach().clone() for p in m.parameters()], log, rule

    p_full, log_full, r_full = run(16)
    p_res, log_res, r_res = run(16, resume_at=split)
    assert 4 <= r_full.gate.shutoff_update < 12, "the low threshold should trip the gate after warm-up, before 12"
    for a, b in zip(p_full, p_res):
        assert torch.equal(a, b)
    assert r_full.state_dict() == r_res.state_dict()
    assert [m["gxpo/active"] for m in log_full] == [m["gxpo/active"] for m in log_res]
    assert log_full[-1]["gxpo/backward_passes"] == 3 * (r_full.gate.shutoff_update + 1) + (15 - r_full.gate.shutoff_update)


def test_sfpo_gate_needs_entropy_and_uses_it():
    x, y = mlp_batch()
    m = TinyMLP()
    opt = torch.optim.SGD(m.parameters(), lr=1e-2)
    cg, st = make_closures(list(m.parameters()), lambda: ((m(x) - y) ** 2).mean(), opt)
    rule = build_update_rule("sfpo", m.parameters(), sfpo={"K": 2, "window": 3})
    with pytest.raises(ValueError, match="entropy"):
        rule.step(cg, st)
    seq = [2.0, 2.0, 2.1, 1.9, 0.1]
    counter = {"passes": 0}
    cg2, st2 = make_closures(
        list(m.parameters()), lambda: ((m(x) - y) ** 2).mean(), opt, counter=counter,
        aux=lambda: {"entropy": seq[(counter["passes"] - 1) // 3]},  # K=2: 3 passes per active update
    )
    rule = build_update_rule("sfpo", m.parameters(), sfpo={"K": 2, "window": 3})
    actives = [rule.step(cg2, st2)["sfpo/active"] for _ in range(4)]
    # 3 fills, the 4th (entropy 1.9) is within 1 sigma? mean 2.033, sd .047 -> z=-2.8 -> trips
    assert actives == [1.0, 1.0, 1.0, 1.0] and not rule.gate.active and rule.gate.shutoff_update == 3


# ---------------------------------------------------------------------------------- numerical guards

finite_or_not = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0.0, -0.0, 1e-45, -1e-45, 1e-38, 3e38, -3e38, 1e-10, -1e-10]),
)


@settings(max_examples=300, deadline=None)
@given(
    g0=st.lists(finite_or_not, min_size=1, max_size=24),
    g1=st.lists(finite_or_not, min_size=24, max_size=24),
    K=st.integers(2, 64),
    bounds=st.tuples(st.floats(-1, 1), st.floats(-1, 1)).map(sorted),
)
def test_ratio_and_scale_never_nan_or_inf(g0, g1, K, bounds):
    a = torch.tensor(g0, dtype=torch.float32)
    b = torch.tensor(g1[: len(g0)], dtype=torch.float32)
    r, act = retention_ratio(b, a, 1e-10, bounds[0], bounds[1])
    s = geometric_scale(r, K, 1e-8)
    assert torch.isfinite(r).all() and torch.isfinite(s).all()
    assert ((r >= bounds[0]) & (r <= bounds[1])).all()
    assert not act[torch.isnan(a)].any()
    # the in-place versions the rule runs give finite values in range too, and s = 1 off the active set
    r2 = b.clone()
    act2 = retention_ratio_(r2, a, 1e-10, bounds[0], bounds[1])
    assert torch.isfinite(r2).all() and ((r2[act2] >= bounds[0]) & (r2[act2] <= bounds[1])).all()
    assert (r2[~act2] == 0).all()  # inactive: no ratio (0 maps to s = 1)
    geometric_scale_(r2, K, 1e-8)
    assert torch.isfinite(r2).all()
    assert (r2[~act2] == 1.0).all()


@settings(max_examples=200, deadline=None)
@given(r=st.floats(0.0, 1.0), K=st.integers(2, 40))
def test_scale_matches_reference_sum_on_default_range(r, K):
    got = geometric_scale(torch.tensor([r], dtype=torch.float64), K, 1e-8).item()
    assert got == pytest.approx(geometric_scale_reference(r, K), rel=1e-9, abs=1e-12)
    assert 1.0 <= got + 1e-12 and got <= K / 2 + 1e-9  # never less than observed, never more than K/2


@settings(max_examples=100, deadline=None)
@given(vals=st.lists(st.floats(-1e30, 1e30).map(lambda v: float(torch.tensor(v, dtype=torch.float32))), min_size=2, max_size=8), sign=st.sampled_from([1.0, -1.0]))
def test_gxpo_update_stays_finite_on_extreme_gradients(vals, sign):
    p = torch.nn.Parameter(torch.tensor(vals, dtype=torch.float32))
    opt = torch.optim.SGD([p], lr=1e-3)
    calls = {"n": 0}

    def cg(phase="plain"):
        opt.zero_grad(set_to_none=False)
        calls["n"] += 1
        flip = sign if calls["n"] % 2 == 0 else 1.0
        p.grad = torch.tensor(vals, dtype=torch.float32) * flip
        return None

    def step():
        n = torch.nn.utils.clip_grad_norm_([p], 1.0)
        if not torch.isfinite(n):
            opt.zero_grad()
            return float(n)
        opt.step()
        return float(n)

    GXPORule([p], {"shutoff": "never", "K": 10}).step(cg, step)
    assert torch.isfinite(p).all()


# ------------------------------------------------------------------------------------------- config

BAD_GXPO = [
    ("K", 1), ("K", 2.5), ("K", True), ("alpha", 0.0), ("alpha", float("inf")), ("alpha", -1),
    ("active_eps", -1e-3), ("ratio_min", -4.5), ("ratio_max", 5.0), ("scale_eps", 0.0),
    ("shutoff", "sometimes"), ("window", 1), ("warmup", 1), ("z_threshold", 0), ("z_eps", -1.0),
    ("host_buffers", "yes"), ("diagnose_every", -1),
]


@pytest.mark.parametrize("key,value", BAD_GXPO)
def test_gxpo_config_rejects_bad_value_naming_key(key, value):
    with pytest.raises(ConfigError) as ei:
        build_config(GXPOConfig, {key: value}, "actor_rollout_ref.actor.gxpo.")
    msg = str(ei.value)
    assert f"actor_rollout_ref.actor.gxpo.{key}" in msg and repr(value) in msg and "allowed" in msg


def test_cross_field_and_fixed_mode_errors():
    with pytest.raises(ConfigError, match=r"gxpo\.ratio_min"):
        GXPOConfig(ratio_min=0.8, ratio_max=0.2)
    with pytest.raises(ConfigError, match=r"gxpo\.shutoff_at"):
        GXPOConfig(shutoff="fixed")
    with pytest.raises(ConfigError, match=r"sfpo\.shutoff_at"):
        SFPOConfig(shutoff="fixed", shutoff_at=-2)
    with pytest.raises(ConfigError, match=r"gxpo\.Kay.*known keys"):
        build_config(GXPOConfig, {"Kay": 3}, "gxpo.")
    with pytest.raises(ConfigError, match="update_rule"):
        build_update_rule("adam", [torch.nn.Parameter(torch.zeros(1))])


@pytest.mark.parametrize("key,value", [("K", 0), ("alpha", 0), ("shutoff", "x"), ("window", 1), ("z_threshold", -1)])
def test_sfpo_config_rejects_bad_value(key, value):
    with pytest.raises(ConfigError, match=rf"sfpo\.{key}"):
        build_config(SFPOConfig, {key: value}, "sfpo.")


def test_defaults_match_spec():
    g = GXPOConfig()
    assert (g.K, g.alpha, g.active_eps, g.ratio_min, g.ratio_max, g.scale_eps) == (5, 1.0, 1e-10, 0.0, 1.0, 1e-8)
    assert (g.shutoff, g.shutoff_at, g.window, g.warmup, g.z_threshold, g.z_eps) == ("adaptive", None, 20, 10, 3.0, 1e-8)
    assert (g.host_buffers, g.diagnose_every) == (False, 0)
    s = SFPOConfig()
    assert (s.K, s.alpha, s.shutoff, s.shutoff_at, s.window, s.z_threshold) == (3, 0.8, "adaptive", None, 30, 1.0)
