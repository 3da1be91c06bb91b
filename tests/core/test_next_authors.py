"""NExt as its authors run it: rank-1 components of merged LoRA deltas from the factors, and the
predictor on a known merged-delta trajectory."""

from __future__ import annotations

import pytest
import torch

from verl_ext.core.next import AUTHORS_COEF_GRID, NExtConfig, fit_and_predict_lora, lora_rank1, rank1, rebuild


def test_lora_rank1_equals_the_svd_of_the_formed_merged_delta():
    g = torch.Generator().manual_seed(0)
    m, n, r, scaling = 12, 9, 3, 2.0
    B, A = torch.randn(m, r, generator=g), torch.randn(r, n, generator=g)
    B0, A0 = torch.randn(m, r, generator=g), torch.randn(r, n, generator=g)
    for args, dense in (((B, A, scaling), scaling * B @ A),
                        ((B, A, scaling, B0, A0), scaling * (B @ A - B0 @ A0))):
        got, want = lora_rank1(*args), rank1(dense)
        torch.testing.assert_close(got["s"], want["s"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["u"], want["u"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got["v"], want["v"], rtol=1e-4, atol=1e-5)
        # the rebuilt rank-1 matrix is the dense delta's best rank-1 approximation
        U, S, Vh = torch.linalg.svd(dense)
        torch.testing.assert_close(rebuild(got, dense.shape), S[0] * torch.outer(U[:, 0], Vh[0]), rtol=1e-4, atol=1e-5)


def test_lora_rank1_of_equal_points_is_zero():
    B, A = torch.randn(5, 2), torch.randn(2, 4)
    assert float(lora_rank1(B, A, 1.0, B, A)["s"]) == pytest.approx(0.0, abs=1e-6)


def _trajectory(steps, m=16, n=10, r=2, rate=0.01, seed=0):
    """Merged delta W_t = (rate * t) * u0 v0^T + (rate * t)^2 * u1 v1^T * 0.1 (a dominant direction and
    a slowly growing second one), written as LoRA factors (B_t [m, r], A_t [r, n], scaling 2)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(m, 2, generator=g))[0]
    v = torch.linalg.qr(torch.randn(n, 2, generator=g))[0]
    out = {}
    for t in steps:
        a, b = rate * t, 0.1 * (rate * t) ** 2
        B = torch.stack([u[:, 0] * a ** 0.5, u[:, 1] * b ** 0.5], 1)
        A = torch.stack([v[:, 0] * a ** 0.5, v[:, 1] * b ** 0.5], 0) / 2.0  # scaling 2 below
        out[t] = {"layer.q": (B, A, 2.0)}
    return out, u, v


def test_known_merged_delta_trajectory_is_predicted_along_its_direction():
    """Checkpoints every 2 steps from 0, the event at step 12, 2 checkpoints (4 steps) ahead: the
    predicted delta W_16 - W_12 points along the true one and has about its size."""
    cfg = NExtConfig(enable=True, mode="authors", snapshot_every=2, horizon=2, extend_at=12, hidden=32,
                     epochs=400, lr=1e-3, loss="l1", seed=0)
    assert cfg.training_steps() == [2, 4, 6, 8]
    factors, u, v = _trajectory(range(0, 13, 2))
    pred, cost = fit_and_predict_lora(factors, cfg)
    B12, A12, sc = factors[12]["layer.q"]
    future, _, _ = _trajectory([16])
    B16, A16, _ = future[16]["layer.q"]
    true = sc * (B16 @ A16 - B12 @ A12)
    got = rebuild(pred["layer.q"], true.shape)
    cos = float((got * true).sum() / (got.norm() * true.norm()))
    assert cos > 0.98, cos
    assert float(got.norm() / true.norm()) == pytest.approx(1.0, abs=0.15)
    assert cost.samples == 3 * 4 and cost.predictor_params > 0 and cost.flops > 0


def test_missing_checkpoint_is_named():
    cfg = NExtConfig(enable=True, snapshot_every=2, horizon=2, extend_at=12, hidden=4, epochs=2)
    factors, _, _ = _trajectory([0, 2, 4, 8, 10, 12])
    with pytest.raises(ValueError, match=r"missing at steps \[6\]"):
        fit_and_predict_lora(factors, cfg)


def test_authors_defaults():
    cfg = NExtConfig()
    assert (cfg.mode, cfg.loss, cfg.lr, cfg.epochs, cfg.hidden, cfg.extend_at) == ("authors", "l1", 2e-5, 1000, 256, 150)
    assert cfg.coef_grid == AUTHORS_COEF_GRID == (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
    assert NExtConfig(snapshot_every=10, horizon=5, extend_at=150).training_steps() == list(range(10, 101, 10))
