"""CAPO's closed-form token terms against a brute-force log-linear model, and the mask on known tokens."""

from __future__ import annotations

import pytest
import torch

from verl_ext.core.capo import CAPOConfig, keep_mask, masked_summary, softmax_power_sums, token_curvature
from verl_ext.core.config import ConfigError


def _brute_force(W, h, a, A, T):
    """Per-token terms of the authors' linear-logit model, by autograd and explicit matrices."""
    W = W.clone().requires_grad_(True)
    z = W @ h / T
    logp = torch.log_softmax(z, -1)[a]
    (g,) = torch.autograd.grad(A * logp, W)  # [V, H]
    pi = torch.softmax(z, -1).detach()
    v = -pi
    v[a] += 1.0
    u = g @ (h / T)  # logit change per unit step along g (z is linear in W with feature h/T)
    F = torch.diag(pi) - torch.outer(pi, pi)
    vu = v @ u
    return {
        "grad_norm_sq": (g * g).sum(),
        "fisher": vu ** 2,
        "hessian": A * (vu ** 2 - u @ F @ u),
        "logp": logp.detach(),
        "s2": (pi ** 2).sum(),
        "s3": (pi ** 3).sum(),
        "hn2": (h / T) @ (h / T),
    }


@pytest.mark.parametrize("T", [1.0, 0.7])
def test_closed_form_matches_brute_force(T):
    torch.manual_seed(0)
    V, H, N = 11, 5, 9
    W = torch.randn(V, H, dtype=torch.float64)
    lr = 0.3
    for i in range(N):
        h = torch.randn(H, dtype=torch.float64) * (1 + i)
        a = int(torch.randint(V, ()))
        A = float(torch.randn(()))
        ref = _brute_force(W, h, a, A, T)
        s2, s3 = softmax_power_sums((W @ h).unsqueeze(0), torch.tensor(T), chunk=1)
        torch.testing.assert_close(s2[0].double(), ref["s2"], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(s3[0].double(), ref["s3"], rtol=1e-5, atol=1e-7)
        terms = token_curvature(torch.tensor(A), ref["logp"], ref["s2"], ref["s3"], ref["hn2"], lr)
        for k in ("grad_norm_sq", "fisher", "hessian"):
            torch.testing.assert_close(terms[k], ref[k].double(), rtol=1e-9, atol=1e-12, msg=k)
        torch.testing.assert_close(terms["kl"], 0.5 * lr ** 2 * ref["fisher"].double())
        torch.testing.assert_close(terms["full_update"], lr * ref["grad_norm_sq"] + 0.5 * lr ** 2 * ref["hessian"])


def test_power_sums_chunked_equals_unchunked_with_per_row_temperature():
    torch.manual_seed(1)
    z = torch.randn(13, 7)
    t = torch.rand(13) + 0.5
    a = softmax_power_sums(z, t, chunk=4)
    b = softmax_power_sums(z, t, chunk=100)
    p = torch.softmax(z / t.unsqueeze(-1), -1)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[0], (p ** 2).sum(-1))
    torch.testing.assert_close(a[1], (p ** 3).sum(-1))


def _batch():
    """2 x 4 tokens; token (0,1) has a huge feature norm, token (1,2) a huge advantage, (1,3) is padding."""
    B, T = 2, 4
    adv = torch.tensor([[0.5], [-0.4]]).expand(B, T).clone()
    adv[1, 2] = 40.0
    hn2 = torch.full((B, T), 2.0)
    hn2[0, 1] = 500.0
    logp = torch.full((B, T), -1.0)
    s2 = torch.full((B, T), 0.2)
    s3 = torch.full((B, T), 0.05)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 3] = False
    return adv, logp, s2, s3, hn2, mask


def test_mask_rejects_exactly_the_unstable_tokens():
    adv, logp, s2, s3, hn2, mask = _batch()
    lr = 1e-2
    terms = token_curvature(adv, logp, s2, s3, hn2, lr)
    # padding token (1,3) is unstable too, but it is not a valid token: it must not be counted
    hn2_pad = hn2.clone()
    hn2_pad[1, 3] = 1e6
    terms_pad = token_curvature(adv, logp, s2, s3, hn2_pad, lr)
    stable = terms["kl"][0, 0].item(), terms["full_update"][0, 0].abs().item()
    # thresholds between the stable tokens' values and the unstable ones'
    cfg = CAPOConfig(enable=True, fisher_tau=stable[0] * 10, hessian_tau=stable[1] * 10)
    masks = keep_mask(terms_pad, cfg)
    expected_drop = {(0, 1), (1, 2), (1, 3)}
    dropped = {(b, t) for b in range(2) for t in range(4) if not masks["keep"][b, t]}
    assert dropped == expected_drop
    s = masked_summary(terms_pad, masks, mask)
    assert s["valid_count"] == 7 and s["masked_count"] == 2
    # with thresholds off nothing is dropped
    off = keep_mask(terms_pad, CAPOConfig(enable=False, fisher_tau=0.0, hessian_tau=0.0))
    assert bool(off["keep"].all())


def test_asymmetric_hessian_mask_drops_negative_predicted_change():
    adv, logp, s2, s3, hn2, mask = _batch()
    terms = token_curvature(adv, logp, s2, s3, hn2, 1e-2)
    terms = dict(terms)
    terms["full_update"] = terms["full_update"].clone()
    terms["full_update"][0, 2] = -1e-9
    sym = keep_mask(terms, CAPOConfig(enable=True, fisher_tau=0.0, hessian_tau=1e9, symmetric=True))
    asym = keep_mask(terms, CAPOConfig(enable=True, fisher_tau=0.0, hessian_tau=1e9, symmetric=False))
    assert bool(sym["keep"][0, 2]) and not bool(asym["keep"][0, 2])


@pytest.mark.parametrize(
    "kw,key",
    [
        ({"fisher_tau": -1.0}, "fisher_tau"),
        ({"hessian_tau": float("nan")}, "hessian_tau"),
        ({"optimizer_model": "lion"}, "optimizer_model"),
        ({"optimizer_model": "adam", "top_k": 0}, "top_k"),
        ({"top_k": -1}, "top_k"),
        ({"adam_beta2": 1.0}, "adam_beta2"),
        ({"adam_eps": 0.0}, "adam_eps"),
        ({"ref_lr": -1e-4}, "ref_lr"),
        ({"enable": "yes"}, "enable"),
        ({"enable": True, "fisher_tau": 0.0, "hessian_tau": 0.0}, "fisher_tau"),
        ({"logits_chunk": 0}, "logits_chunk"),
    ],
)
def test_config_errors_name_key_value_allowed(kw, key):
    with pytest.raises(ConfigError) as e:
        CAPOConfig(**kw)
    assert e.value.key == key and e.value.allowed
