"""CAPO's Adam optimizer model and top-k pi: terms on a small batch against a hand computation.

The hand computation follows the authors' definitions literally (luckeciano/stable-pg-llm,
``SparseAdamModel`` + ``_compute_and_log_*``): a dense [K, H] token gradient per token, Adam moments
per vocabulary row, explicit Fisher matrix, Python loops -- no shared code with verl_ext.core.capo.
"""

from __future__ import annotations

import math

import pytest
import torch

from verl_ext.core.capo import (
    AdamLogitModel,
    CAPOConfig,
    keep_mask,
    masked_summary,
    softmax_power_sums,
    token_curvature,
    token_curvature_topk,
    token_gradients,
    topk_softmax,
)

B1, B2, EPS = 0.9, 0.999, 1e-8


def _hand_terms(A, h, ids, pi, a_pos, lr, m_state, v_state, t):
    """One token: lists in, floats out. ``m_state``/``v_state``: dict row -> list[H] (absent = 0)."""
    K, H = len(ids), len(h)
    v = [(1.0 if j == a_pos else 0.0) - pi[j] for j in range(K)]
    g = [[A * v[j] * h[c] for c in range(H)] for j in range(K)]
    if t == 0:
        G = g
    else:
        G = []
        for j in range(K):
            row = []
            for c in range(H):
                m0 = m_state.get(ids[j], [0.0] * H)[c]
                v0 = v_state.get(ids[j], [0.0] * H)[c]
                m1 = B1 * m0 + (1 - B1) * g[j][c]
                v1 = B2 * v0 + (1 - B2) * g[j][c] ** 2
                mh = m1 / (1 - B1 ** (t + 1))
                vh = v1 / (1 - B2 ** (t + 1))
                row.append(mh / (math.sqrt(vh) + EPS))
            G.append(row)
    u = [sum(G[j][c] * h[c] for c in range(H)) for j in range(K)]
    gG = sum(g[j][c] * G[j][c] for j in range(K) for c in range(H))
    vu = sum(v[j] * u[j] for j in range(K))
    F = [[(pi[i] if i == j else 0.0) - pi[i] * pi[j] for j in range(K)] for i in range(K)]
    uFu = sum(u[i] * F[i][j] * u[j] for i in range(K) for j in range(K))
    hess = A * (vu ** 2 - uFu)
    return {"grad_norm_sq": gG, "fisher": vu ** 2, "hessian": hess, "kl": 0.5 * lr ** 2 * vu ** 2,
            "full_update": lr * gG + 0.5 * lr ** 2 * hess}, g


def _batch(seed=0, N=6, V=9, H=4, K=4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, V, generator=g, dtype=torch.float64) * 2
    h = torch.randn(N, H, generator=g, dtype=torch.float64)
    A = torch.tensor([1.2, -0.7, 0.0, 2.0, -1.5, 0.4], dtype=torch.float64)[:N]
    ids, pi = topk_softmax(logits, None, K)
    pi = pi.double()
    # actions: in the top-k for all tokens but the last (sampled outside the top-k: e_a = 0 there)
    a_pos = [int(torch.randint(K, (1,), generator=g)) for _ in range(N - 1)] + [-1]
    action = torch.zeros(N, K, dtype=torch.float64)
    for n, j in enumerate(a_pos):
        if j >= 0:
            action[n, j] = 1.0
    return logits, h, A, ids, pi, a_pos, action


def test_topk_softmax_is_the_renormalised_top_rows():
    logits, *_ = _batch()
    ids, pi = topk_softmax(logits.float(), torch.tensor(0.5), k=4, chunk=2)
    full = torch.softmax(logits.float() / 0.5, -1)
    top = torch.topk(full, 4, -1)
    assert torch.equal(ids, top.indices)
    torch.testing.assert_close(pi, top.values / top.values.sum(-1, keepdim=True))


def test_adam_model_terms_match_a_hand_computation_over_three_steps():
    """Step 1 is SGD (no moments yet); steps 2 and 3 use the bias-corrected prospective moments of
    the per-row mean gradient of the kept tokens of the previous steps."""
    N, V, H, K = 6, 9, 4, 4
    lr = 0.05
    model = AdamLogitModel(V, H, B1, B2, EPS, dtype=torch.float64)
    m_state, v_state = {}, {}
    for step in range(3):
        logits, h, A, ids, pi, a_pos, action = _batch(seed=step)
        terms = token_curvature_topk(A, ids, pi, action, h, lr, model, chunk=4)
        keep = torch.tensor([True, True, False, True, True, True])  # one token masked: not in the moment update
        sums, counts = {}, {}
        for n in range(N):
            ref, g = _hand_terms(float(A[n]), h[n].tolist(), ids[n].tolist(), pi[n].tolist(), a_pos[n], lr,
                                 m_state, v_state, step)
            for k, want in ref.items():
                assert float(terms[k][n]) == pytest.approx(want, rel=1e-9, abs=1e-15), (step, n, k)
            if keep[n]:
                for j, row in enumerate(ids[n].tolist()):
                    sums[row] = [x + y for x, y in zip(sums.get(row, [0.0] * H), g[j])]
                    counts[row] = counts.get(row, 0) + 1
        # the model's update vs the hand update of the moments of the rows seen
        model.accumulate(token_gradients(A, pi, action, h), ids, keep)
        model.step()
        for row, s in sums.items():
            mean = [x / counts[row] for x in s]
            m_state[row] = [B1 * m + (1 - B1) * x for m, x in zip(m_state.get(row, [0.0] * H), mean)]
            v_state[row] = [B2 * v + (1 - B2) * x * x for v, x in zip(v_state.get(row, [0.0] * H), mean)]
        for row in range(V):
            torch.testing.assert_close(model.m[row], torch.tensor(m_state.get(row, [0.0] * H), dtype=torch.float64))
            torch.testing.assert_close(model.v[row], torch.tensor(v_state.get(row, [0.0] * H), dtype=torch.float64))
        assert model.t == step + 1


def test_sgd_topk_vector_path_equals_the_scalar_closed_form():
    """With the SGD model the K-row computation and the per-token scalars (pi over the top-k) agree."""
    logits, h, A, ids, pi, a_pos, action = _batch(seed=3)
    lr = 0.2
    vec = token_curvature_topk(A, ids, pi, action, h, lr, None)
    p_a = (pi * action).sum(-1)
    s2, s3 = (pi ** 2).sum(-1), (pi ** 3).sum(-1)
    sca = token_curvature(A, p_a.clamp_min(1e-300).log(), s2, s3, (h * h).sum(-1), lr, in_support=action.sum(-1) > 0)
    for k in ("grad_norm_sq", "fisher", "hessian", "kl", "full_update"):
        torch.testing.assert_close(vec[k], sca[k], rtol=1e-9, atol=1e-15, msg=k)


def test_full_vocab_top_k_equals_the_full_softmax_terms():
    logits, h, A, *_ = _batch(seed=4)
    V = logits.shape[1]
    ids, pi = topk_softmax(logits, None, V)
    a = torch.argmax(logits, -1)
    action = (ids == a.unsqueeze(-1)).double()
    vec = token_curvature_topk(A, ids, pi.double(), action, h, 0.1, None)
    s2, s3 = softmax_power_sums(logits)
    logp = torch.log_softmax(logits, -1).gather(-1, a.unsqueeze(-1)).squeeze(-1)
    sca = token_curvature(A, logp, s2, s3, (h * h).sum(-1), 0.1)
    for k in ("grad_norm_sq", "fisher", "hessian"):
        torch.testing.assert_close(vec[k], sca[k], rtol=1e-5, atol=1e-9, msg=k)


def test_lr_relative_thresholds_scale_linearly_and_quadratically():
    cfg = CAPOConfig(enable=True, fisher_tau=1e-4, hessian_tau=1e-2, ref_lr=1e-5)
    assert cfg.thresholds(1e-5) == pytest.approx((1e-4, 1e-2))
    assert cfg.thresholds(1e-4) == pytest.approx((1e-2, 1e-1))
    # the same tokens at 10x the lr: the lr-linear term alone crosses an absolute threshold
    terms1 = token_curvature(torch.tensor([1.0]), torch.tensor([-2.0]), torch.tensor([0.3]), torch.tensor([0.1]),
                             torch.tensor([4.0]), 1e-5)
    terms10 = token_curvature(torch.tensor([1.0]), torch.tensor([-2.0]), torch.tensor([0.3]), torch.tensor([0.1]),
                              torch.tensor([4.0]), 1e-4)
    absolute = CAPOConfig(enable=True, fisher_tau=0.0, hessian_tau=float(terms1["full_update"][0]) * 2)
    relative = CAPOConfig(enable=True, fisher_tau=0.0, hessian_tau=absolute.hessian_tau, ref_lr=1e-5)
    assert bool(keep_mask(terms1, absolute)["keep"][0]) and not bool(keep_mask(terms10, absolute)["keep"][0])
    assert bool(keep_mask(terms10, relative, lr=1e-4)["keep"][0])
    with pytest.raises(ValueError, match="ref_lr"):
        keep_mask(terms10, relative)


def test_masked_summary_breaks_down_by_advantage_sign_and_pi():
    terms = {"kl": torch.zeros(2, 3), "full_update": torch.zeros(2, 3), "hessian": torch.zeros(2, 3)}
    keep = torch.tensor([[True, False, True], [False, False, True]])
    masks = {"keep": keep, "fisher": keep, "hessian": torch.ones_like(keep)}
    valid = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = torch.tensor([[1.0], [-1.0]])
    pi_a = torch.tensor([[0.05, 0.3, 0.9], [0.05, 0.6, 0.2]])
    s = masked_summary(terms, masks, valid, adv, pi_a)
    assert (s["by/adv_pos/valid"], s["by/adv_pos/masked"]) == (3.0, 1.0)
    assert (s["by/adv_neg/valid"], s["by/adv_neg/masked"]) == (2.0, 2.0)
    assert (s["by/pi_lt0.1/valid"], s["by/pi_lt0.1/masked"]) == (2.0, 1.0)
    assert (s["by/pi_0.1to0.5/valid"], s["by/pi_0.1to0.5/masked"]) == (1.0, 1.0)
    assert (s["by/pi_ge0.5/valid"], s["by/pi_ge0.5/masked"]) == (2.0, 1.0)
