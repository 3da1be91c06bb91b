"""Two gloo processes agree on every gate option (statistic, sidedness, patience, signal, step
granularity, variant) and under a decision group wider than the shard group (HSDP replicas)."""

import math

import pytest
import torch
import torch.multiprocessing as mp

from helpers import dist_core_worker as W
from verl_ext.testing.cpu_worker import free_port

BASE = {"K": 4, "alpha": 0.9, "window": 6, "warmup": 4, "z_threshold": 2.0}
OPTIONS = {
    "authors_ema_two_sided_patience": (
        {**BASE, "variant": "authors", "alpha": 0.9, "gate_stat": "ema", "ema_omega": 0.3, "two_sided": True,
         "patience": 2, "gate_signal": "corrective_norm_clipped", "optimizer_state": "transactional",
         "z_threshold": 1.0},
        {"clip": 50.0}),
    "step_granularity_cosine": (
        {**BASE, "gate_granularity": "step", "gate_signal": "cosine", "z_threshold": 1.0}, {"step_every": 2}),
    "probe_norm_relative_rms": (
        {**BASE, "gate_signal": "probe_norm", "active_mode": "relative_rms", "on_failure": "standard_step",
         "z_threshold": 1.0}, {}),
}



def _run(tmp_path, tag, world, cfg, options, n=24, rank0_threshold=None):
    out = tmp_path / f"{tag}_w{world}"
    out.mkdir()
    if world == 1:
        W.run(0, 1, str(out), n, cfg, None, options)
    else:
        mp.spawn(W.spawn_entry, args=(world, str(out), n, cfg, rank0_threshold, free_port(), options),
                 nprocs=world, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


def _same(a, b, tol=1e-9):
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return math.isclose(a, b, rel_tol=tol, abs_tol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("tag", list(OPTIONS))
def test_two_shards_agree_with_each_other_and_one_process(tmp_path, tag):
    cfg, options = OPTIONS[tag]
    single = _run(tmp_path, tag, 1, cfg, options)[0]
    r0, r1 = _run(tmp_path, tag, 2, cfg, options)
    assert single["state"]["gate"]["shutoff_update"] >= 0, "each option is set up so that the gate trips"
    for ms, m0, m1 in zip(single["metrics"], r0["metrics"], r1["metrics"]):
        assert m0["gxpo/active"] == m1["gxpo/active"] == ms["gxpo/active"]
        assert m0["gxpo/shutoff_update"] == m1["gxpo/shutoff_update"] == ms["gxpo/shutoff_update"]
        for k in m0:
            assert k in m1 and _same(m0[k], m1[k]), k
            if k in ms:
                assert _same(m0[k], ms[k], 1e-7), (k, m0[k], ms[k])
    assert r0["state"]["gate"] == r1["state"]["gate"]
    assert r0["step_metrics"] == r1["step_metrics"]
    torch.testing.assert_close(torch.cat([r0["param"], r1["param"]]), single["param"], rtol=1e-9, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["update", "step"])
def test_decision_group_wider_than_shard_group_makes_replicas_agree(tmp_path, granularity):
    # replicas (shard group of one each): only rank 0 is told to trip at the slightest rise; the
    # decision is broadcast over the world, so both replicas shut off at the same update and stay equal
    cfg = {**BASE, "gate_granularity": granularity}
    options = {"replicated": True, "step_every": 2}
    r0, r1 = _run(tmp_path, granularity, 2, cfg, options, n=14, rank0_threshold=1e-6)
    s0, s1 = r0["state"]["gate"], r1["state"]["gate"]
    assert s0["shutoff_update"] == s1["shutoff_update"] >= 4
    assert not s0["active"] and not s1["active"]
    assert [m["gxpo/active"] for m in r0["metrics"]] == [m["gxpo/active"] for m in r1["metrics"]]
    assert torch.equal(r0["param"], r1["param"])  # same passes, same data: identical replicas
