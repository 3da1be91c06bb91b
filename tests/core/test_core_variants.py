"""The variant knobs of GXPO, one piece at a time, and the two variants end to end (docs/algorithm.md#variants)."""

import copy
import math
import warnings

import pytest
import torch

from helpers.core_problems import Quadratic, TinyMLP, gd_iterates, make_closures, mlp_batch
from verl_ext.core import (
    VARIANT_DEFAULTS, ConfigError, GXPOConfig, GXPORule, TorchOptimizerState, ZScoreGate, build_config,
    build_update_rule,
)
from verl_ext.core.extrapolation import active_mask, clamp_scale_, geometric_scale, geometric_scale_, retention_ratio_
from verl_ext.core.policies import FailurePolicy, OptimizerStatePolicy
from verl_ext.core.ratio_source import clip_factor

AUTHORS = GXPOConfig(variant="authors")
PAPER = GXPOConfig()


def _quadratic(n=7, seed=0, lr=0.1):
    g = torch.Generator().manual_seed(seed)
    h = torch.rand(n, generator=g, dtype=torch.float64) * 8 + 0.5
    target = torch.randn(n, generator=g, dtype=torch.float64)
    theta0 = torch.randn(n, generator=g, dtype=torch.float64) * 3
    return h, target, theta0, lr


def _scale(r, cfg, K):
    """The scale pipeline the rule runs for ``cfg`` on already-clamped ratios r."""
    s = r.clone()
    geometric_scale_(s, K, cfg.scale_eps, guard=cfg.scale_guard)
    return clamp_scale_(s, K, cfg.scale_min, cfg.scale_headroom)


# ------------------------------------------------------------------------------------ config / variants


def test_variant_resolution_fills_unset_knobs_and_explicit_wins():
    a = GXPOConfig(variant="authors")
    for name, (p, au) in VARIANT_DEFAULTS.items():
        assert getattr(PAPER, name) == p, name
        assert getattr(a, name) == au, name
    assert a.explicit == frozenset()
    b = build_config(GXPOConfig, {"variant": "authors", "alpha": 0.9, "window": 7, "ratio_max": 1.0}, "x.gxpo.")
    assert (b.alpha, b.window, b.ratio_max) == (0.9, 7, 1.0)
    assert (b.warmup, b.ratio_min, b.z_threshold, b.ratio_source) == (30, -2.0, 2.0, "clipped")
    assert b.explicit == {"alpha", "window", "ratio_max"}
    r = b.resolved()
    assert r["variant"] == "authors" and r["alpha"] == 0.9 and r["scale_min"] == 1.0 and None not in (
        r["ratio_source"], r["gate_stat"], r["two_sided"])
    # a later change of variant re-fills only the knobs that were not set
    b.variant = "paper_text"
    b.validate()
    assert (b.alpha, b.window, b.warmup, b.ratio_min) == (0.9, 7, 10, 0.0)


def test_build_update_rule_authors_without_verl_prints_and_saves_resolved(capsys):
    p = torch.nn.Parameter(torch.zeros(3))
    rule = build_update_rule("gxpo", [p], gxpo=dict(variant="authors", K=3))
    out = capsys.readouterr().out
    assert '"variant": "authors"' in out and '"alpha": 0.5' in out and out.count("[gxpo] resolved config") == 1
    sd = rule.state_dict()
    assert sd["config"]["alpha"] == 0.5 and sd["config"]["ratio_min"] == -2.0
    other = build_update_rule("gxpo", [p], gxpo=dict(variant="authors", K=3, alpha=0.7))
    with pytest.warns(UserWarning, match=r"alpha: 0\.5 -> 0\.7"):
        other.load_state_dict(sd)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_update_rule("gxpo", [p], gxpo=dict(variant="authors", K=3), clip_grad=1.0).load_state_dict(sd)


BAD = [
    ("variant", "author", "paper_text | authors"), ("ratio_source", "adam", "raw | clipped | adam_direction"),
    ("active_mode", "rms", "absolute | relative_rms"), ("active_rel", 0.0, "> 0"),
    ("ratio_denominator", "max", "plain | floored"), ("ratio_min", -4.5, "[-4, 4]"), ("ratio_max", 4.5, "[-4, 4]"),
    ("ratio_nonfinite", "nan", "zero | one"), ("scale_guard", "clip", "floor | one"),
    ("scale_min", float("nan"), "null or a finite number"), ("scale_headroom", "x", "null or a finite number"),
    ("optimizer_state", "reset", "carry | transactional"), ("on_failure", "retry", "skip | standard_step"),
    ("min_probe_norm", -1.0, ">= 0"), ("recompute_old_log_probs", "yes", "true or false"),
    ("degenerate_skip_frac", 0.0, "(0, 1]"), ("degenerate_skip_frac", 1.5, "(0, 1]"),
    ("gate_signal", "loss", "corrective_norm | corrective_norm_clipped"), ("gate_stat", "median", "window | ema"),
    ("ema_omega", 0.0, "(0, 1]"), ("ema_omega", 1.5, "(0, 1]"), ("two_sided", 1, "true or false"),
    ("trip_inclusive", "no", "true or false"), ("patience", 0, ">= 1"), ("gate_granularity", "epoch", "update | step"),
]


@pytest.mark.parametrize("key,value,allowed", BAD)
def test_validation_names_key_value_and_allowed(key, value, allowed):
    with pytest.raises(ConfigError) as ei:
        build_config(GXPOConfig, {"variant": "authors", key: value}, "actor_rollout_ref.actor.gxpo.")
    msg = str(ei.value)
    assert f"actor_rollout_ref.actor.gxpo.{key}" in msg and repr(value) in msg and allowed in msg


def test_cross_field_validation():
    with pytest.raises(ConfigError, match=r"gxpo\.ratio_min"):
        GXPOConfig(variant="authors", ratio_min=3.5)  # above the variant's ratio_max 3.0
    with pytest.raises(ConfigError, match=r"gxpo\.scale_min"):
        GXPOConfig(variant="authors", K=4, scale_min=3.5)  # above K/2 + headroom = 3


# ---------------------------------------------------------------------------------- scale boundaries


@pytest.mark.parametrize("cfg", [PAPER, AUTHORS], ids=["paper_text", "authors"])
@pytest.mark.parametrize("K", [2, 3, 5, 10])
def test_scale_boundaries(cfg, K):
    r = torch.tensor([1.0, 0.0], dtype=torch.float64)
    s = _scale(r, cfg, K)
    assert s[0].item() == K / 2 and s[1].item() == 1.0  # r = 1 -> K/2, r = 0 -> 1
    # K = 2 -> s == 1 on the variant's whole ratio range (incl. the guard at r = -1 for authors)
    grid = torch.linspace(cfg.ratio_min, cfg.ratio_max, 1001, dtype=torch.float64)
    if K == 2:
        torch.testing.assert_close(_scale(grid, cfg, 2), torch.ones_like(grid), rtol=0, atol=1e-12)
    assert torch.isfinite(_scale(grid, cfg, K)).all()


def test_r_minus_one_gives_one_under_the_authors_guard():
    r = torch.tensor([-1.0, -1.0 + 1e-12], dtype=torch.float64)
    for K in (3, 4, 5, 10):
        torch.testing.assert_close(_scale(r, AUTHORS, K), torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("K", [3, 5, 10])
def test_clipped_ratio_hits_the_headroom_bound(K):
    r = torch.tensor([AUTHORS.ratio_max, 2.5], dtype=torch.float64)
    s = _scale(r, AUTHORS, K)
    raw = geometric_scale(r, K, 1e-8)
    assert (raw > K / 2 + 1).all()  # unclamped the prediction would go far beyond K steps
    assert (s == K / 2 + 1.0).all()
    # the lower clamp: negative ratios with odd K give s < 1 unclamped, 1 clamped
    neg = torch.tensor([-2.0, -1.5, -0.5], dtype=torch.float64)
    assert (geometric_scale(neg, 5, 1e-8, guard="one")[:2] < 1).all()
    assert (_scale(neg, AUTHORS, 5) >= 1.0).all()


def test_scale_matches_reference_sum_on_authors_range():
    r = torch.linspace(-2.0, 3.0, 501, dtype=torch.float64)
    r = r[(r + 1).abs() > 1e-6]
    for K in (3, 5, 10):
        ref = torch.tensor([sum(float(x) ** j for j in range(K)) / (1 + float(x)) for x in r], dtype=torch.float64)
        torch.testing.assert_close(geometric_scale(r, K, 1e-8, guard="one"), ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("cfg", [PAPER, AUTHORS], ids=["paper_text", "authors"])
def test_bf16_agrees_with_fp32_and_inputs_are_not_mutated(cfg):
    g = torch.Generator().manual_seed(0)
    g0 = torch.randn(4096, generator=g)
    g1 = g0 * (torch.rand(4096, generator=g) * 5 - 2)  # ratios spread over [-2, 3]
    outs = {}
    for dt in (torch.float32, torch.bfloat16):
        a, b = g0.to(dt), g1.to(dt)
        a_copy = a.clone()
        x1 = b.clone()
        floor = cfg.active_eps if cfg.ratio_denominator == "floored" else None
        act = retention_ratio_(x1, a, cfg.active_eps, cfg.ratio_min, cfg.ratio_max, floor=floor,
                               nonfinite=1.0 if cfg.ratio_nonfinite == "one" else 0.0)
        assert torch.equal(a, a_copy)  # x0 is read only
        s = x1.clone()
        geometric_scale_(s, 5, cfg.scale_eps, guard=cfg.scale_guard)
        clamp_scale_(s, 5, cfg.scale_min, cfg.scale_headroom)
        outs[dt] = (x1.float(), s.float(), act)
    r32, s32, _ = outs[torch.float32]
    r16, s16, _ = outs[torch.bfloat16]
    ok = (r32 + 1).abs() > 0.05  # away from the S_2 = 0 pole the bf16 scale tracks fp32
    assert (r16 - r32).abs().max() < 0.05
    torch.testing.assert_close(s16[ok], s32[ok], rtol=0.1, atol=0.1)
    assert torch.isfinite(s16).all()


@pytest.mark.parametrize("cfg", [PAPER, AUTHORS], ids=["paper_text", "authors"])
@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16, torch.float64])
def test_non_finite_in_finite_out(cfg, dt):
    vals = [0.0, -0.0, 1e-30, -1e-30, 1.0, -1.0, float("nan"), float("inf"), -float("inf"), 3e38, -3e38, 1e-9]
    g0 = torch.tensor([a for a in vals for _ in vals], dtype=dt)
    g1 = torch.tensor([b for _ in vals for b in vals], dtype=dt)
    x1 = g1.clone()
    floor = cfg.active_eps if cfg.ratio_denominator == "floored" else None
    act = retention_ratio_(x1, g0, cfg.active_eps, cfg.ratio_min, cfg.ratio_max, floor=floor,
                           nonfinite=1.0 if cfg.ratio_nonfinite == "one" else 0.0)
    assert torch.isfinite(x1).all() and (x1 >= cfg.ratio_min).all() and (x1 <= cfg.ratio_max).all()
    assert not act[torch.isnan(g0)].any()
    assert (x1[~act] == 0).all()
    for K in (2, 5, 17):
        s = x1.clone()
        geometric_scale_(s, K, cfg.scale_eps, guard=cfg.scale_guard)
        clamp_scale_(s, K, cfg.scale_min, cfg.scale_headroom)
        assert torch.isfinite(s).all() and (s[~act] == 1).all()


def test_ratio_nonfinite_value_and_floored_denominator():
    g0 = torch.tensor([0.0, 1e-12, -1e-12, 2.0, float("nan")], dtype=torch.float64)
    g1 = torch.tensor([float("nan"), 1e-12, 1e-12, 1.0, 1.0], dtype=torch.float64)
    everywhere = torch.ones(5, dtype=torch.bool)  # as if all were active (relative mode can admit tiny x0)
    one = g1.clone()
    retention_ratio_(one, g0, 1e-8, -2.0, 3.0, active=everywhere, floor=1e-8, nonfinite=1.0)
    # nan/x -> 1; 1e-12 / max(1e-12, 1e-8) = 1e-4 (floored, sign kept); plain 1/2; NaN x0 -> 1
    torch.testing.assert_close(one, torch.tensor([1.0, 1e-4, -1e-4, 0.5, 1.0], dtype=torch.float64))
    zero = g1.clone()
    retention_ratio_(zero, g0, 1e-8, -2.0, 3.0, active=everywhere, nonfinite=0.0)
    assert zero[0].item() == 0.0 and zero[1].item() == 1.0 and zero[2].item() == -1.0  # plain: 1e-12/1e-12


def test_active_set_modes():
    x0 = torch.tensor([1e-9, 1e-7, 1.0, float("nan")])
    assert active_mask(x0, 1e-8).tolist() == [False, True, True, False]
    # relative_rms in the rule: per tensor, threshold active_rel * RMS(x0) over the whole (sharded) tensor
    big = torch.nn.Parameter(torch.tensor([100.0, 1.0, 0.05]))
    small = torch.nn.Parameter(torch.tensor([1e-3, 1e-6]))
    opt = torch.optim.SGD([big, small], lr=0.01)
    grads = {"v": [torch.tensor([100.0, 1.0, 0.05]), torch.tensor([1e-3, 1e-6])]}

    def cg(phase="plain"):
        big.grad, small.grad = grads["v"][0].clone(), grads["v"][1].clone()

    def st():
        opt.step()
        return float(torch.sqrt(sum((p.grad ** 2).sum() for p in (big, small))))

    m = GXPORule([big, small], {"active_mode": "relative_rms", "active_rel": 1e-2, "shutoff": "never"}).step(cg, st)
    # RMS(big) ~ 57.7 -> threshold 0.577: 100 and 1 active, 0.05 not; RMS(small) ~ 7.1e-4 -> threshold
    # 7.1e-6: 1e-3 active, 1e-6 not (an absolute 1e-10 threshold would make all five active)
    assert m["gxpo/inactive_frac"] == pytest.approx(2 / 5)


# ------------------------------------------------------------------------------------ ratio sources


def test_clip_factor():
    assert clip_factor(4.0, 1.0) == 0.25 and clip_factor(0.5, 1.0) == 1.0 and clip_factor(3.0, None) == 1.0
    assert clip_factor(0.0, 1.0) == 1.0


def test_clipped_source_ratio_is_of_the_clipped_gradients():
    # constant gradient g: raw r = 1; with clipping c0 = c1 (same norm) -> clipped r = 1 too.
    # make the second gradient twice the first: raw r = 2 -> clamp; clipped r = (c1 2g)/(c0 g) = 1 when both clip
    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    opt = torch.optim.SGD([p], lr=1e-3)
    seq = {"n": 0}

    def cg(phase="plain"):
        seq["n"] += 1
        p.grad = torch.full((4,), 1.0 if seq["n"] == 1 else 2.0, dtype=torch.float64)

    def st():
        n = torch.nn.utils.clip_grad_norm_([p], 0.5)
        opt.step()
        return float(n)

    kw = {"shutoff": "never", "ratio_max": 3.0, "ratio_min": -2.0}
    m_raw = GXPORule([p], {**kw, "ratio_source": "raw"}, clip_grad=0.5).step(cg, st)
    seq["n"] = 0
    m_clip = GXPORule([p], {**kw, "ratio_source": "clipped"}, clip_grad=0.5).step(cg, st)
    assert m_raw["gxpo/retention_ratio_mean"] == pytest.approx(2.0, rel=1e-6)
    assert m_clip["gxpo/retention_ratio_mean"] == pytest.approx(1.0, rel=1e-5)


def test_adam_direction_ratio_is_the_optimizer_direction_ratio():
    x, y = mlp_batch()
    m = TinyMLP()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1)
    loss = lambda: ((m(x) - y) ** 2).mean()  # noqa: E731
    cg, st = make_closures(list(m.parameters()), loss, opt)
    ps = list(m.parameters())
    traj = []

    def spy(phase="plain"):
        traj.append([p.detach().clone() for p in ps])
        return cg(phase)

    cfg = {"ratio_source": "adam_direction", "shutoff": "never", "ratio_min": -4.0, "ratio_max": 4.0,
           "active_eps": 0.0}
    rule = GXPORule(m.parameters(), cfg)
    with pytest.raises(ValueError, match="lr_wd"):
        rule.step(spy, st)
    m = TinyMLP()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1)
    cg, st = make_closures(list(m.parameters()), loss, opt)
    ps = list(m.parameters())
    traj.clear()
    out = GXPORule(m.parameters(), cfg).step(spy, st, optimizer_state=TorchOptimizerState(opt))
    th1 = traj[1]  # the parameters at probe 2
    keep = 1 - 1e-2 * 0.1
    # theta1 and theta2 are two plain AdamW steps from the same start: recompute them
    ref = TinyMLP()
    ropt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1)
    rcg, rst = make_closures(list(ref.parameters()), lambda: ((ref(x) - y) ** 2).mean(), ropt)
    its = [[p.detach().clone() for p in ref.parameters()]]
    for _ in range(2):
        rcg()
        rst()
        its.append([p.detach().clone() for p in ref.parameters()])
    for a, b in zip(its[1], th1):
        torch.testing.assert_close(a, b)
    d0 = torch.cat([((keep * t0 - t1) / 1e-2).flatten() for t0, t1 in zip(its[0], its[1])])
    d1 = torch.cat([((keep * t1 - t2) / 1e-2).flatten() for t1, t2 in zip(its[1], its[2])])
    act = d0.abs() > 0
    rr = (d1[act] / d0[act]).clamp(-4, 4)
    assert out["gxpo/retention_ratio_mean"] == pytest.approx(float(rr.mean()), rel=1e-9)
    assert out["gxpo/inactive_frac"] == pytest.approx(1 - float(act.float().mean()))


# ---------------------------------------------------------------------------- Corollary 2, both variants


@pytest.mark.parametrize("variant", ["paper_text", "authors"])
@pytest.mark.parametrize("K", [2, 3, 5, 10])
def test_corollary2_both_variants(variant, K):
    h, target, theta0, lr = _quadratic()
    q = Quadratic(h, target, theta0)
    opt = torch.optim.SGD([q.param], lr=lr)
    cg, step = make_closures([q.param], q.loss, opt)
    rule = GXPORule([q.param], {"variant": variant, "K": K, "alpha": 1.0, "active_eps": 1e-300, "shutoff": "never"},
                    clip_grad=1e6)  # clipped ratio source with a clip that never binds
    seen = {}
    passes = {"n": 0}

    def spy(phase="plain"):
        passes["n"] += 1
        if passes["n"] == 3:
            seen["tilde"] = q.param.detach().clone()
            seen["phase"] = phase
        return cg(phase)

    rule.step(spy, step)
    iters = gd_iterates(h, target, theta0, lr, K + 1)
    assert seen["phase"] == "corrective"
    torch.testing.assert_close(seen["tilde"], iters[K], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(q.param.detach(), iters[K + 1], rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- optimizer-state policy


def test_transactional_restores_moments_exactly_and_advances_step_once():
    x, y = mlp_batch()
    m, ref = TinyMLP(), TinyMLP()
    o, oref = torch.optim.AdamW(m.parameters(), lr=5e-3), torch.optim.AdamW(ref.parameters(), lr=5e-3)
    cg, st = make_closures(list(m.parameters()), lambda: ((m(x) - y) ** 2).mean(), o, clip=1.0)
    rule = GXPORule(m.parameters(), {"optimizer_state": "transactional", "shutoff": "never", "K": 4})
    hooks = TorchOptimizerState(o)
    calls = {"n": 0}
    seen = {}

    def st_spy():
        calls["n"] += 1
        if calls["n"] % 3 == 0:  # the corrective step of an update: the state it starts from
            seen["state"] = {p: {k: v.clone() for k, v in s.items()} for p, s in o.state.items()}
        return st()

    for u in range(3):
        before = hooks.save()
        rule.step(cg, st_spy, optimizer_state=hooks)
        assert {int(s["step"]) for s in o.state.values()} == {u + 1}  # one step per update
        if u > 0:  # the corrective step started from exactly the pre-probe moments
            for p, s in before["state"].items():
                assert torch.equal(seen["state"][p]["exp_avg"], s["exp_avg"])
                assert torch.equal(seen["state"][p]["exp_avg_sq"], s["exp_avg_sq"])
                assert int(seen["state"][p]["step"]) == u
        else:
            assert seen["state"] == {}  # before the first update Adam had no state yet
    # and the snapshot is not aliased by the live state: restoring twice gives the same state
    snap = hooks.save()
    cg()
    st()
    hooks.restore(snap)
    s1 = {p: s["exp_avg"].clone() for p, s in o.state.items()}
    cg()
    st()
    hooks.restore(snap)
    for p, s in o.state.items():
        assert torch.equal(s["exp_avg"], s1[p])


def test_state_policy_piece():
    class Hooks:
        def __init__(self):
            self.log = []

        def save(self):
            self.log.append("save")
            return "snap"

        def restore(self, s):
            self.log.append(("restore", s))

    h = Hooks()
    carry = OptimizerStatePolicy("carry")
    carry.begin(h)
    carry.before_corrective(h)
    carry.on_failure(h)
    assert h.log == []
    tx = OptimizerStatePolicy("transactional")
    tx.begin(h)
    tx.before_corrective(h)
    assert h.log == ["save", ("restore", "snap")]
    with pytest.raises(ValueError, match="optimizer_state"):
        OptimizerStatePolicy("transactional").begin(None)


# ------------------------------------------------------------------------------------ failure policy


def test_failure_policy_piece():
    f = FailurePolicy("standard_step", 1e-8)
    assert f.probe_failed(float("nan"), first=False) and f.probe_failed(0.0, first=True)
    assert not f.probe_failed(0.0, first=False) and not f.probe_failed(1.0, first=True)
    assert not FailurePolicy("skip", 0.0).probe_failed(0.0, first=True)  # paper text: a zero norm is not a failure


@pytest.mark.parametrize("bad_pass", [1, 2])
def test_standard_step_fallback_is_one_plain_step_from_theta0(bad_pass):
    h, target, theta0, lr = _quadratic()
    q = Quadratic(h, target, theta0)
    opt = torch.optim.SGD([q.param], lr=lr)
    cg, st = make_closures([q.param], q.loss, opt)
    phases = []

    def poisoned(phase="plain"):
        phases.append(phase)
        out = cg(phase)
        if len(phases) == bad_pass:
            q.param.grad[1] = float("nan")
        return out

    rule = GXPORule([q.param], {"variant": "authors", "shutoff": "never"})
    m = rule.step(poisoned, st)
    assert phases[-1] == "plain" and len(phases) == bad_pass + 1
    expect = theta0 - lr * h * (theta0 - target)  # one plain GD step from theta0
    torch.testing.assert_close(q.param.detach(), expect, rtol=1e-12, atol=1e-12)
    assert m["gxpo/fallback_steps"] == 1 and m["gxpo/skipped_updates"] == 0


def test_standard_step_non_finite_corrective_restores_theta0():
    h, target, theta0, lr = _quadratic()
    q = Quadratic(h, target, theta0)
    opt = torch.optim.SGD([q.param], lr=lr)
    cg, st = make_closures([q.param], q.loss, opt)

    def poisoned(phase="plain"):
        out = cg(phase)
        if phase == "corrective":
            q.param.grad[0] = float("inf")
        return out

    rule = GXPORule([q.param], {"variant": "authors", "shutoff": "adaptive"})
    rule.step(poisoned, st)
    assert torch.equal(q.param.detach(), theta0) and rule.gate.n_observed == 0


def test_min_probe_norm_counts_a_tiny_probe_as_failed():
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = torch.optim.SGD([p], lr=0.1)
    phases = []

    def cg(phase="plain"):
        phases.append(phase)
        p.grad = torch.full((3,), 1e-12, dtype=torch.float64)

    def st():
        opt.step()
        return float(p.grad.norm())

    m = GXPORule([p], {"variant": "authors", "shutoff": "never", "min_probe_norm": 1e-6}).step(cg, st)
    assert phases == ["probe1", "plain"] and m["gxpo/fallback_steps"] == 1


# --------------------------------------------------------------------------------- force_plain, phases


def test_force_plain_is_one_pass_counted_and_does_not_feed_the_gate():
    x, y = mlp_batch()
    m = TinyMLP()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    phases = []
    cg, st = make_closures(list(m.parameters()), lambda: ((m(x) - y) ** 2).mean(), opt)

    def spy(phase="plain"):
        phases.append(phase)
        return cg(phase)

    rule = GXPORule(m.parameters(), {"warmup": 2, "window": 3})
    out = rule.step(spy, st, force_plain=True)
    assert phases == ["plain"] and out["gxpo/degenerate_skips"] == 1 and rule.gate.n_observed == 0
    out = rule.step(spy, st)
    assert phases[1:] == ["probe1", "probe2", "corrective"] and rule.gate.n_observed == 1
    assert out["gxpo/degenerate_skips"] == 1 and out["gxpo/backward_passes"] == 4


# ------------------------------------------------------------------------------------- gate statistic


def _flat(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (10.0 + torch.randn(n, generator=g, dtype=torch.float64)).tolist()


def _gate(stat, patience, **kw):
    return ZScoreGate(window=20, warmup=20, threshold=3.0, stat=stat, ema_omega=0.1, patience=patience, **kw)


@pytest.mark.parametrize("stat", ["window", "ema"])
def test_flat_noisy_series_does_not_trip(stat):
    g = _gate(stat, 3)
    for i, v in enumerate(_flat()):
        g.observe(v, i)
    assert g.active and g.shutoff_update == -1


@pytest.mark.parametrize("stat", ["window", "ema"])
def test_spike_trips_and_patience_needs_consecutive(stat):
    series = _flat(60)
    g = _gate(stat, 1)
    for i, v in enumerate(series):
        g.observe(v, i)
    assert g.active, "the flat part alone does not trip (patience 1)"
    g.observe(30.0, len(series))
    assert not g.active and g.shutoff_update == len(series)
    # patience 3: a single spike is not enough, three escalating over-threshold values are
    series = _flat()
    g3 = _gate(stat, 3)
    for i, v in enumerate(series + [30.0]):
        g3.observe(v, i)
    assert g3.active and g3.streak == 1
    for i, v in enumerate([100.0, 1000.0], start=len(series) + 1):
        g3.observe(v, i)
    assert not g3.active and g3.shutoff_update == len(series) + 2


def test_ema_statistic_definition():
    g = ZScoreGate(window=5, warmup=2, threshold=3.0, stat="ema", ema_omega=0.5, eps=0.0)
    g.observe(3.0, 0)  # mu = sigma = 1 at start; only updates during warm-up
    assert (g.stat.mu, g.stat.sigma) == (2.0, pytest.approx(math.sqrt(0.5 + 0.5 * 4)))
    g.observe(2.0, 1)
    mu, sig = g.stat.mu, g.stat.sigma
    _, z = g.observe(5.0, 2)
    assert z == pytest.approx((5.0 - mu) / sig)  # z scored before the update
    g2 = ZScoreGate(window=5, warmup=2, stat="ema", ema_omega=1.0)
    for i in range(4):
        g2.observe(7.0, i)
    assert g2.stat.sigma == 0.01  # floored


def test_two_sided_and_inclusive():
    g = ZScoreGate(window=4, warmup=4, threshold=1.0, eps=0.0, two_sided=True, inclusive=True)
    for i, v in enumerate([1.0, 3.0, 1.0, 3.0]):  # mu 2, sigma 1
        g.observe(v, i)
    tripped, z = g.observe(1.0, 4)  # z = -1 exactly: |z| >= 1 trips
    assert tripped and z == -1.0
    h = ZScoreGate(window=4, warmup=4, threshold=1.0, eps=0.0)
    for i, v in enumerate([1.0, 3.0, 1.0, 3.0]):
        h.observe(v, i)
    assert not h.observe(3.0, 4)[0]  # z = 1 exactly is not > 1 (paper text)


@pytest.mark.parametrize("signal", ["corrective_norm_clipped", "probe_norm", "entropy", "cosine"])
def test_gate_signal_values(signal):
    x, y = mlp_batch()
    m = TinyMLP()
    opt = torch.optim.SGD(m.parameters(), lr=1e-2)
    cg, st = make_closures(list(m.parameters()), lambda: ((m(x) - y) ** 2).mean(), opt, clip=0.1,
                           aux=lambda: {"entropy": 0.25})
    rule = GXPORule(m.parameters(), {"gate_signal": signal, "shutoff": "never"}, clip_grad=0.1)
    out = rule.step(cg, st)
    expect = {
        "corrective_norm_clipped": min(out["gxpo/corrective_grad_norm"], 0.1),
        "probe_norm": out["gxpo/probe_grad_norm_0"],
        "entropy": 0.25,
        "cosine": 1 - abs(out["gxpo/cos_g0_gcorr"]),
    }[signal]
    assert out["gxpo/gate_signal"] == pytest.approx(expect, rel=1e-12)
    assert list(rule.gate.buffer) == [pytest.approx(expect, rel=1e-12)]


def test_step_granularity_decides_once_per_step_on_the_mean():
    x, y = mlp_batch()
    m = TinyMLP()
    opt = torch.optim.SGD(m.parameters(), lr=1e-2)
    cg, st = make_closures(list(m.parameters()), lambda: ((m(x) - y) ** 2).mean(), opt)
    rule = GXPORule(m.parameters(), {"gate_granularity": "step"})
    sig = [rule.step(cg, st)["gxpo/gate_signal"] for _ in range(3)]
    assert rule.gate.n_observed == 0
    out = rule.end_step()
    assert rule.gate.n_observed == 1 and list(rule.gate.buffer) == [pytest.approx(sum(sig) / 3)]
    assert out["gxpo/gate_signal_step"] == pytest.approx(sum(sig) / 3)
    upd = GXPORule(m.parameters(), {})
    assert upd.end_step() == {}


# ------------------------------------------------------------------------ true-K diagnostic (issue #9)


def test_diagnostic_true_K_steps_start_from_theta0_optimizer_state():
    """The diagnostic's K true steps equal K plain steps from theta0 with a fresh copy of theta0's state."""
    x, y = mlp_batch()
    K = 3
    m = TinyMLP()
    opt = torch.optim.AdamW(m.parameters(), lr=2e-2)
    loss = lambda mm: lambda: ((mm(x) - y) ** 2).mean()  # noqa: E731
    cg, st = make_closures(list(m.parameters()), loss(m), opt, clip=1.0)
    rule = GXPORule(m.parameters(), {"shutoff": "never", "diagnose_every": 2, "K": K})
    hooks = TorchOptimizerState(opt)
    rule.step(cg, st, optimizer_state=hooks)  # update 0 is diagnostic too; run update 1 (not) then 2 (is)
    rule.step(cg, st, optimizer_state=hooks)
    theta0 = [p.detach().clone() for p in m.parameters()]
    state0 = copy.deepcopy(opt.state_dict())
    phases = []

    def spy(phase="plain"):
        phases.append(phase)
        return cg(phase)

    out = rule.step(spy, st, optimizer_state=hooks)
    assert phases == ["probe1", "probe2"] + ["diagnostic"] * K + ["corrective"]

    def true_displacement(plain_steps_before):
        """K plain steps from theta0 with a fresh copy of theta0's optimizer state (advanced first by
        ``plain_steps_before`` plain steps from theta0, as the probes would have advanced it)."""
        ref = TinyMLP()
        ropt = torch.optim.AdamW(ref.parameters(), lr=2e-2)
        ropt.load_state_dict(copy.deepcopy(state0))
        rcg, rst = make_closures(list(ref.parameters()), loss(ref), ropt, clip=1.0)
        with torch.no_grad():
            for p, a in zip(ref.parameters(), theta0):
                p.copy_(a)
        for _ in range(plain_steps_before):
            rcg()
            rst()
        with torch.no_grad():
            for p, a in zip(ref.parameters(), theta0):
                p.copy_(a)
        for _ in range(K):
            rcg()
            rst()
        return float(torch.cat([(p.detach() - a).flatten() for p, a in zip(ref.parameters(), theta0)]).norm())

    right, wrong = true_displacement(0), true_displacement(2)
    assert out["gxpo/diag_true_displacement_norm"] == pytest.approx(right, rel=1e-10)
    assert abs(wrong - right) > 1e-6 * right  # the post-probe state would give a measurably different answer
    assert int(next(iter(opt.state.values()))["step"]) == 9  # the diagnostic left the optimizer state as it was


# ------------------------------------------------------------------------- save -> load -> continue


@pytest.mark.parametrize("variant", ["paper_text", "authors"])
@pytest.mark.parametrize("split", [3, 10])
def test_save_load_continue_identical(variant, split):
    cfg = {"variant": variant, "K": 3, "warmup": 4, "window": 6, "z_threshold": 0.5, "alpha": 0.8,
           "optimizer_state": "transactional" if variant == "authors" else "carry",
           "gate_stat": "ema" if variant == "authors" else "window"}
    batches = [mlp_batch(seed=s) for s in range(14)]
    cur = {"u": 0}

    def loss_of(mm):
        def loss():
            xx, yy = batches[cur["u"]]
            return ((mm(xx) - yy) ** 2).mean()

        return loss

    def run(resume_at=None):
        m = TinyMLP()
        opt = torch.optim.AdamW(m.parameters(), lr=3e-2)
        cg, st = make_closures(list(m.parameters()), loss_of(m), opt, clip=1.0)
        rule = GXPORule(m.parameters(), cfg, clip_grad=1.0)
        log = []
        for u in range(14):
            cur["u"] = u
            if u == resume_at:
                sd_rule, sd_opt, sd_m = rule.state_dict(), opt.state_dict(), m.state_dict()
                m = TinyMLP(seed=123)
                m.load_state_dict(sd_m)
                opt = torch.optim.AdamW(m.parameters(), lr=3e-2)
                opt.load_state_dict(sd_opt)
                cg, st = make_closures(list(m.parameters()), loss_of(m), opt, clip=1.0)
                rule = GXPORule(m.parameters(), cfg, clip_grad=1.0)
                rule.load_state_dict(sd_rule)
            log.append(rule.step(cg, st, optimizer_state=TorchOptimizerState(opt)))
        return [p.detach().clone() for p in m.parameters()], log, rule

    p_full, log_full, r_full = run()
    p_res, log_res, r_res = run(resume_at=split)
    assert 0 <= r_full.gate.shutoff_update, "the low threshold trips the gate"
    for a, b in zip(p_full, p_res):
        assert torch.equal(a, b)
    assert r_full.state_dict() == r_res.state_dict()
    assert [m["gxpo/active"] for m in log_full] == [m["gxpo/active"] for m in log_res]
