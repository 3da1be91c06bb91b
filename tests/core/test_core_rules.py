"""The update rules against their mathematical definition (docs/algorithm.md#active-update, #sfpo, #faults, #budget)."""

import math

import pytest
import torch

from helpers.core_problems import Quadratic, TinyMLP, gd_iterates, make_closures, mlp_batch
from verl_ext.core import GRPORule, GXPORule, SFPORule, build_update_rule
from verl_ext.core.extrapolation import geometric_scale


def _quadratic(n=7, seed=0, lr=0.1):
    g = torch.Generator().manual_seed(seed)
    h = torch.rand(n, generator=g, dtype=torch.float64) * 8 + 0.5  # lr*h in (0.05, 0.85): r in (0, 1)
    target = torch.randn(n, generator=g, dtype=torch.float64)
    theta0 = torch.randn(n, generator=g, dtype=torch.float64) * 3
    return h, target, theta0, lr


@pytest.mark.parametrize("K", [2, 3, 5, 10])
def test_corollary2_one_update_equals_K_plus_1_gd_steps(K):
    h, target, theta0, lr = _quadratic()
    q = Quadratic(h, target, theta0)
    opt = torch.optim.SGD([q.param], lr=lr)
    cg, step = make_closures([q.param], q.loss, opt)
    rule = GXPORule([q.param], {"K": K, "alpha": 1.0, "active_eps": 1e-300, "shutoff": "never"})

    # theta_hat_K, observed right after the reposition (before the corrective pass)
    seen = {}
    passes = {"n": 0}

    def spy(phase="plain"):
        passes["n"] += 1
        if passes["n"] == 3:
            seen["theta_tilde"] = q.param.detach().clone()
        return cg()

    metrics = rule.step(spy, step)
    iters = gd_iterates(h, target, theta0, lr, K + 1)
    torch.testing.assert_close(seen["theta_tilde"], iters[K], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(q.param.detach(), iters[K + 1], rtol=1e-12, atol=1e-12)
    assert metrics["gxpo/backward_passes"] == 3 and metrics["gxpo/optimizer_steps"] == 3
    # r = 1 - lr*h exactly in this surrogate
    assert metrics["gxpo/inactive_frac"] == 0.0
    assert math.isclose(metrics["gxpo/retention_ratio_mean"], float((1 - lr * h).mean()), rel_tol=1e-10)


def test_corollary2_with_alpha_partway():
    h, target, theta0, lr = _quadratic(seed=3)
    K, alpha = 5, 0.4
    q = Quadratic(h, target, theta0)
    opt = torch.optim.SGD([q.param], lr=lr)
    cg, step = make_closures([q.param], q.loss, opt)
    GXPORule([q.param], {"K": K, "alpha": alpha, "active_eps": 0.0, "shutoff": "never"}).step(cg, step)
    iters = gd_iterates(h, target, theta0, lr, K)
    tilde = theta0 + alpha * (iters[K] - theta0)
    expect = tilde - lr * h * (tilde - target)
    torch.testing.assert_close(q.param.detach(), expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("N", [1, 3, 5])
def test_sfpo_alpha_one_equals_N_plus_1_plain_steps(N):
    x, y = mlp_batch()
    m_rule, m_ref = TinyMLP(), TinyMLP()
    loss = lambda m: lambda: ((m(x) - y) ** 2).mean()  # noqa: E731
    opt_rule = torch.optim.AdamW(m_rule.parameters(), lr=1e-2)
    opt_ref = torch.optim.AdamW(m_ref.parameters(), lr=1e-2)
    cg, st = make_closures(list(m_rule.parameters()), loss(m_rule), opt_rule, clip=1.0)
    rule = SFPORule(m_rule.parameters(), {"K": N, "alpha": 1.0, "shutoff": "never"})
    metrics = rule.step(cg, st)
    cg2, st2 = make_closures(list(m_ref.parameters()), loss(m_ref), opt_ref, clip=1.0)
    for _ in range(N + 1):
        cg2()
        st2()
    for a, b in zip(m_rule.parameters(), m_ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert metrics["sfpo/backward_passes"] == N + 1


def test_grpo_is_exactly_one_plain_step():
    x, y = mlp_batch()
    m_rule, m_ref = TinyMLP(dtype=torch.float32), TinyMLP(dtype=torch.float32)
    x, y = x.float(), y.float()
    loss = lambda m: lambda: ((m(x) - y) ** 2).mean()  # noqa: E731
    o1, o2 = torch.optim.AdamW(m_rule.parameters(), lr=1e-2), torch.optim.AdamW(m_ref.parameters(), lr=1e-2)
    cg, st = make_closures(list(m_rule.parameters()), loss(m_rule), o1, clip=0.5)
    metrics = build_update_rule("grpo", m_rule.parameters()).step(cg, st)
    cg2, st2 = make_closures(list(m_ref.parameters()), loss(m_ref), o2, clip=0.5)
    cg2()
    st2()
    for a, b in zip(m_rule.parameters(), m_ref.parameters()):
        assert torch.equal(a, b)
    assert metrics["grpo/backward_passes"] == 1


def _manual_gxpo_adamw(model, loss_fn, opt, K, alpha, clip):
    """GXPO written out directly from docs/algorithm.md#active-update with full copies (reference for the in-place version)."""
    params = list(model.parameters())
    theta0 = [p.detach().clone() for p in params]
    opt.zero_grad()
    loss_fn().backward()
    g0 = [p.grad.detach().clone() for p in params]
    torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    opt.zero_grad()
    loss_fn().backward()
    g1 = [p.grad.detach().clone() for p in params]
    torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    with torch.no_grad():
        for p, t0, a, b in zip(params, theta0, g0, g1):
            act = a.abs() > 1e-10
            r = torch.where(act, b / torch.where(act, a, torch.ones_like(a)), torch.zeros_like(a)).clamp(0, 1)
            s = torch.tensor([sum(float(ri) ** j for j in range(K)) / (1 + float(ri)) for ri in r.flatten()], dtype=p.dtype)
            s = torch.where(act.flatten(), s, torch.ones_like(s)).view_as(p)
            p.copy_(t0 + alpha * s * (p - t0))
    opt.zero_grad()
    loss_fn().backward()
    torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()


def test_adamw_state_advances_three_steps_and_matches_reference():
    x, y = mlp_batch()
    m, ref = TinyMLP(), TinyMLP()
    loss = lambda mm: lambda: ((mm(x) - y) ** 2).mean()  # noqa: E731
    o, oref = torch.optim.AdamW(m.parameters(), lr=5e-3), torch.optim.AdamW(ref.parameters(), lr=5e-3)
    cg, st = make_closures(list(m.parameters()), loss(m), o, clip=0.3)
    rule = GXPORule(m.parameters(), {"K": 4, "alpha": 0.7, "shutoff": "never"})
    for u in range(3):
        rule.step(cg, st)
        _manual_gxpo_adamw(ref, loss(ref), oref, K=4, alpha=0.7, clip=0.3)
        steps = {int(s["step"]) for s in o.state.values()}
        assert steps == {3 * (u + 1)}  # three optimizer steps per active update, never reset
    for a, b in zip(m.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for (pa, sa), (pb, sb) in zip(o.state.items(), oref.state.items()):
        torch.testing.assert_close(sa["exp_avg"], sb["exp_avg"], rtol=1e-10, atol=1e-14)


def test_clipping_is_undone_for_the_ratio():
    """With clipping active the ratio still uses raw g1/g0: same result as the Corollary without clipping."""
    h, target, theta0, lr = _quadratic(seed=5)
    K = 4
    q = Quadratic(h, target, theta0)
    opt = torch.optim.SGD([q.param], lr=lr)
    cg, step = make_closures([q.param], q.loss, opt, clip=1e-3)  # clips every step
    m = GXPORule([q.param], {"K": K, "shutoff": "never", "active_eps": 0.0}).step(cg, step)
    lr_h = lr * h
    assert m["gxpo/retention_ratio_mean"] > 0
    # clipped steps are tiny, so g1 ~= g0 and r ~= 1 (not the scaled 1e-3 ratio a naive read would give)
    assert m["gxpo/retention_ratio_mean"] > 0.99
    assert m["gxpo/scale_mean"] == pytest.approx(K / 2, rel=1e-2)
    assert float(lr_h.max()) < 1


def test_inactive_coordinates_keep_observed_displacement():
    # coordinate 2 has zero curvature and zero gradient at theta0 -> inactive, s = 1
    h = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)
    target = torch.tensor([1.0, -1.0, 5.0], dtype=torch.float64)
    theta0 = torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64)
    q = Quadratic(h, target, theta0)
    opt = torch.optim.SGD([q.param], lr=0.1, momentum=0.0)
    cg, st = make_closures([q.param], q.loss, opt)
    m = GXPORule([q.param], {"K": 6, "shutoff": "never"}).step(cg, st)
    assert m["gxpo/inactive_frac"] == pytest.approx(1 / 3)
    assert q.param[2].item() == 0.0


@pytest.mark.parametrize("bad_pass", [1, 2])
def test_non_finite_probe_restores_theta0_and_counts(bad_pass):
    h, target, theta0, lr = _quadratic()
    q = Quadratic(h, target, theta0)
    opt = torch.optim.AdamW([q.param], lr=lr)
    cg, st = make_closures([q.param], q.loss, opt)
    calls = {"n": 0}

    def poisoned(phase="plain"):
        calls["n"] += 1
        out = cg()
        if calls["n"] == bad_pass:
            q.param.grad[1] = float("nan")
        return out

    rule = GXPORule([q.param], {"shutoff": "never"})
    m = rule.step(poisoned, st)
    assert torch.equal(q.param.detach(), theta0)
    assert torch.isfinite(q.param).all()
    assert m["gxpo/skipped_updates"] == 1 and rule.skipped_updates == 1
    assert m["gxpo/backward_passes"] == bad_pass
    # the next update proceeds normally
    m2 = rule.step(cg, st)
    assert m2["gxpo/skipped_updates"] == 1 and torch.isfinite(q.param).all()
    assert not torch.equal(q.param.detach(), theta0)


def test_non_finite_corrective_keeps_finite_params_and_does_not_feed_gate():
    h, target, theta0, lr = _quadratic()
    q = Quadratic(h, target, theta0)
    opt = torch.optim.SGD([q.param], lr=lr)
    cg, st = make_closures([q.param], q.loss, opt)
    calls = {"n": 0}

    def poisoned(phase="plain"):
        calls["n"] += 1
        out = cg()
        if calls["n"] == 3:
            q.param.grad[0] = float("inf")
        return out

    rule = GXPORule([q.param], {"shutoff": "adaptive"})
    rule.step(poisoned, st)
    assert torch.isfinite(q.param).all()
    assert rule.gate.n_observed == 0 and rule.skipped_updates == 1


def test_inactive_gxpo_is_single_pass_grpo():
    x, y = mlp_batch()
    m, ref = TinyMLP(), TinyMLP()
    loss = lambda mm: lambda: ((mm(x) - y) ** 2).mean()  # noqa: E731
    o, oref = torch.optim.AdamW(m.parameters(), lr=1e-2), torch.optim.AdamW(ref.parameters(), lr=1e-2)
    cg, st = make_closures(list(m.parameters()), loss(m), o, clip=1.0)
    rule = GXPORule(m.parameters(), {"shutoff": "fixed", "shutoff_at": 0})
    metrics = rule.step(cg, st)
    cg2, st2 = make_closures(list(ref.parameters()), loss(ref), oref, clip=1.0)
    GRPORule(ref.parameters()).step(cg2, st2)
    for a, b in zip(m.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    assert metrics["gxpo/active"] == 0 and metrics["gxpo/backward_passes"] == 1
    assert metrics["gxpo/shutoff_update"] == 0


def test_scale_values():
    r = torch.tensor([0.0, 0.5, 1.0, -1.0, -0.5, 1 - 1e-12, 1e-300], dtype=torch.float64)
    s = geometric_scale(r, 5, 1e-8)
    assert s[0] == 1.0 and s[2] == 2.5
    assert s[1] == pytest.approx((1 - 0.5**5) / (1 - 0.25))
    assert s[4] == pytest.approx((1 - (-0.5) ** 5) / (1 - 0.25))
    assert s[5] == pytest.approx(2.5, rel=1e-9)
    assert torch.isfinite(s).all()


def test_host_buffers_give_identical_result():
    h, target, theta0, lr = _quadratic(seed=9)
    res = []
    for host in (False, True):
        q = Quadratic(h, target, theta0)
        opt = torch.optim.AdamW([q.param], lr=lr)
        cg, st = make_closures([q.param], q.loss, opt, clip=1.0)
        rule = GXPORule([q.param], {"host_buffers": host, "shutoff": "never"})
        for _ in range(3):
            rule.step(cg, st)
        res.append(q.param.detach().clone())
    assert torch.equal(res[0], res[1])


def test_diagnostic_restores_params_and_optimizer_state():
    from verl_ext.core import TorchOptimizerState

    h, target, theta0, lr = _quadratic(seed=2)
    outs = []
    for diag in (0, 1):
        q = Quadratic(h, target, theta0)
        opt = torch.optim.AdamW([q.param], lr=lr)
        cg, st = make_closures([q.param], q.loss, opt, clip=1.0)
        rule = GXPORule([q.param], {"shutoff": "never", "diagnose_every": diag, "K": 3})
        ms = [rule.step(cg, st, optimizer_state=TorchOptimizerState(opt)) for _ in range(2)]
        outs.append((q.param.detach().clone(), ms, rule))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=1e-14)
    m = outs[1][1][0]
    assert "gxpo/diag_rel_err_hat" in m and m["gxpo/diag_rel_err_hat"] >= 0
    assert outs[1][2].diagnostic_passes == 6 and outs[1][2].backward_passes == 6


def test_diagnostic_on_quadratic_sgd_has_zero_hat_error():
    from verl_ext.core import TorchOptimizerState

    h, target, theta0, lr = _quadratic(seed=4)
    q = Quadratic(h, target, theta0)
    opt = torch.optim.SGD([q.param], lr=lr)
    cg, st = make_closures([q.param], q.loss, opt)
    rule = GXPORule([q.param], {"shutoff": "never", "diagnose_every": 1, "K": 5, "active_eps": 0.0})
    m = rule.step(cg, st, optimizer_state=TorchOptimizerState(opt))
    assert m["gxpo/diag_rel_err_hat"] < 1e-10
    assert m["gxpo/diag_cos_hat_true"] == pytest.approx(1.0, abs=1e-10)
