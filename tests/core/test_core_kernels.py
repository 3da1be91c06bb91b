"""The fused kernels of the active update: host syncs per update are a small constant, and the
compiled kernels give the eager kernels' numbers (docs/algorithm.md#active-update)."""

from __future__ import annotations

import math

import pytest
import torch

from helpers.core_problems import make_closures
from verl_ext.core import GXPORule, SFPORule, TorchOptimizerState
from verl_ext.core import kernels as K
from verl_ext.core import rules
from verl_ext.testing.sync_count import SyncCounter


def _model(n_tensors: int, width: int, seed: int = 0):
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(width, width) for _ in range(n_tensors // 2)]
    return torch.nn.Sequential(*[m for lin in layers for m in (lin, torch.nn.Tanh())])


def _count_syncs(n_tensors: int, cfg: dict, rule_cls=GXPORule) -> int:
    return _count(n_tensors, cfg, rule_cls).count


def _count(n_tensors: int, cfg: dict, rule_cls=GXPORule) -> SyncCounter:
    model = _model(n_tensors, 16)
    params = list(model.parameters())
    x, y = torch.randn(32, 16), torch.randn(32, 16)
    opt = torch.optim.AdamW(params, lr=1e-2)
    cg, st = make_closures(params, lambda: torch.nn.functional.mse_loss(model(x), y), opt, clip=1.0)
    rule = rule_cls(params, cfg) if rule_cls is SFPORule else rule_cls(params, cfg, clip_grad=1.0)
    hooks = TorchOptimizerState(opt)
    rule.step(cg, st, optimizer_state=hooks)  # warm-up (first Adam step)
    counter = SyncCounter()
    with counter:
        m = rule.step(counter.closure(cg), counter.closure(st), optimizer_state=hooks)
    assert m[f"{rule.name}/backward_passes"] == (6 if rule_cls is GXPORule else 8)  # both updates were active
    return counter


@pytest.mark.parametrize("cfg", [
    {"variant": "paper_text"},
    {"variant": "authors"},
    {"variant": "paper_text", "active_mode": "relative_rms"},
    {"variant": "paper_text", "ratio_source": "adam_direction"},
], ids=["paper_text", "authors", "relative_rms", "adam_direction"])
def test_host_syncs_per_active_update_are_a_small_constant(monkeypatch, cfg):
    """4 tensors in 4 chunks or 200 tensors in 1,600 chunks: the same handful of host transfers."""
    monkeypatch.setenv(K.KERNELS_ENV, "eager")
    monkeypatch.setattr(rules, "CHUNK_NUMEL", 32)  # many chunks per tensor
    cfg = {"K": 5, "shutoff": "never", **cfg}
    small, large = _count_syncs(4, cfg), _count_syncs(200, cfg)
    assert small == large, (small, large)
    assert 1 <= large <= 16, large


_VIEWS = {"view", "_unsafe_view", "slice", "select", "expand", "as_strided", "alias", "t", "transpose", "unsqueeze",
          "squeeze"}


@pytest.mark.parametrize("cfg", [{"variant": "paper_text"}, {"variant": "authors"},
                                 {"variant": "paper_text", "active_mode": "relative_rms"}],
                         ids=["paper_text", "authors", "relative_rms"])
def test_ops_per_tensor_are_views_only(monkeypatch, cfg):
    """Small tensors (one chunk each) go through every phase in flattened batches: a tensor more adds a
    few view ops (metadata, no kernel), not the few dozen eager ops per phase it took one by one
    (on a GPU each of those is a launch). With ``active_mode: relative_rms`` the per-tensor sums of
    squares (each tensor's threshold) are one batched ``index_add_`` too."""
    monkeypatch.setenv(K.KERNELS_ENV, "eager")
    cfg = {"K": 5, "shutoff": "never", **cfg}
    small, large = _count(4, cfg).dispatched, _count(200, cfg).dispatched
    grew = {op: (large[op] - small[op]) / 196 for op in large if large[op] > small[op]}
    assert sum(grew.values()) <= 20, grew
    assert not {op: n for op, n in grew.items() if op not in _VIEWS}, grew


def test_sfpo_host_syncs_are_a_small_constant(monkeypatch):
    monkeypatch.setenv(K.KERNELS_ENV, "eager")
    monkeypatch.setattr(rules, "CHUNK_NUMEL", 32)
    cfg = {"K": 3, "shutoff": "never"}
    small, large = _count_syncs(4, cfg, SFPORule), _count_syncs(200, cfg, SFPORule)
    assert small == large and large <= 16, (small, large)


def test_sync_counter_sees_the_syncs_it_counts():
    """The counter itself: a boolean-mask index, an item() and a tolist() are three syncs."""
    t = torch.arange(6.0)
    with SyncCounter() as c:
        t[t > 2].sum().item()
        t.tolist()
    assert c.count == 3 and c.ops[-1] == "tolist", c.ops
    reps = torch.tensor([1, 2, 3])
    with SyncCounter() as c:
        t[:3].repeat_interleave(reps, output_size=6)  # the output size given: no sync
    assert c.count == 0, c.ops
    with SyncCounter() as c:
        t[:3].repeat_interleave(reps)
    assert c.count >= 1 and "repeat_interleave" in c.ops, c.ops


def test_median_sample_is_the_first_active_samples_in_order():
    v = torch.tensor([float("nan"), 3.0, float("nan"), 1.0, 2.0, 5.0])
    out = K.first_k_finite(v, 3)
    assert out.tolist() == [3.0, 1.0, 2.0]
    out = K.first_k_finite(v, 6)
    assert out[:4].tolist() == [3.0, 1.0, 2.0, 5.0] and bool(torch.isnan(out[4:]).all())


def test_kernel_mode_switch_names_the_variable(monkeypatch):
    monkeypatch.setenv(K.KERNELS_ENV, "fast")
    with pytest.raises(ValueError, match="GXPO_KERNELS='fast': allowed auto | compile | eager"):
        K.kernel_mode()


def _one_update(cfg: dict, mode: str, monkeypatch):
    monkeypatch.setenv(K.KERNELS_ENV, mode)
    model = _model(4, 96, seed=3)
    params = list(model.parameters())
    x, y = torch.randn(64, 96, generator=torch.Generator().manual_seed(1)), torch.randn(64, 96)
    opt = torch.optim.AdamW(params, lr=3e-3)
    cg, st = make_closures(params, lambda: torch.nn.functional.mse_loss(model(x), y), opt, clip=1.0)
    rule = GXPORule(params, {"K": 5, "shutoff": "never", **cfg}, clip_grad=1.0)
    ms = [rule.step(cg, st, optimizer_state=TorchOptimizerState(opt)) for _ in range(2)]
    return [p.detach().clone() for p in params], ms[-1]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["paper_text", "authors"])
def test_compiled_kernels_equal_eager_kernels(monkeypatch, variant):
    """torch.compile'd (inductor) kernels: the same parameters and metrics as the eager ops (fp32, 1e-6)."""
    if not K._compiler_available(torch.device("cpu")):
        pytest.skip("no C++ compiler for inductor on this machine")
    torch.manual_seed(0)
    pe, me = _one_update({"variant": variant}, "eager", monkeypatch)
    torch.manual_seed(0)
    pc, mc = _one_update({"variant": variant}, "compile", monkeypatch)
    for a, b in zip(pe, pc):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    for k in ("retention_ratio_mean", "retention_ratio_median", "scale_mean", "inactive_frac", "displacement_norm",
              "reposition_norm", "cos_g0_gcorr"):
        assert math.isclose(mc[f"gxpo/{k}"], me[f"gxpo/{k}"], rel_tol=1e-6, abs_tol=1e-9), (k, mc, me)


def test_finite_test_is_skipped_only_where_the_scale_is_bounded():
    f32 = torch.float32
    assert K.scale_is_bounded(5, -2.0, 3.0, 1e-8, f32)            # the authors' clamp: |s| <= 5 * 3^4 / 1e-8
    assert not K.scale_is_bounded(5, -2.0, math.inf, 1e-8, f32)   # unbounded ratio
    assert not K.scale_is_bounded(5, -2.0, 3.0, 0.0, f32)         # no guard on S_2
    assert not K.scale_is_bounded(90, -2.0, 3.0, 1e-8, f32)       # 3^89 overflows float32
    assert K.scale_is_bounded(90, -2.0, 3.0, 1e-8, torch.float64)


@pytest.mark.parametrize("guard_one", [True, False])
def test_fused_extrapolation_without_the_finite_test_gives_the_same_numbers(guard_one):
    """On a bounded clamp (every r in [-2, 3], r = -1 and r = 0 included) the kernel without the non-finite
    test equals the kernel with it, parameters and all five sums."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4096, generator=g)
    x1 = x0 * torch.cat([torch.tensor([-1.0, 0.0, 3.0, -2.0, 7.0, -9.0]), torch.empty(4090).uniform_(-3, 4, generator=g)])
    x0[:3] = torch.tensor([0.0, -0.0, 1e-12])  # inactive coordinates
    p, a = torch.randn(4096, generator=g), torch.randn(4096, generator=g)
    prm = torch.tensor([1.0, 1e-8, 1.0, -2.0, 3.0, 1e-8, 1.0, 3.5, 0.5])
    flags = dict(K=5, floored=True, nonneg=False, guard_one=guard_one, clamp_lo=True, clamp_hi=True, moves_one=False)
    new_a, new_b = torch.empty_like(p), torch.empty_like(p)
    sums_a = K._extrapolate(x1, x0, p, a, torch.tensor(1e-8), prm, new_a, finite_guard=True, **flags)
    sums_b = K._extrapolate(x1, x0, p, a, torch.tensor(1e-8), prm, new_b, finite_guard=False, **flags)
    assert torch.isfinite(new_a).all()
    assert torch.equal(new_a, new_b) and torch.equal(sums_a, sums_b)


_FLAG_SETS = {  # the two variants and the options that change the compiled pipeline
    "paper_text": dict(K=5, floored=False, nonneg=True, guard_one=False, clamp_lo=False, clamp_hi=False,
                       moves_one=False, finite_guard=False),
    "authors": dict(K=5, floored=True, nonneg=False, guard_one=True, clamp_lo=True, clamp_hi=True, moves_one=False,
                    finite_guard=False),
    "floor_guard_finite_test": dict(K=3, floored=False, nonneg=False, guard_one=False, clamp_lo=False, clamp_hi=True,
                                    moves_one=True, finite_guard=True),
    "K1": dict(K=1, floored=False, nonneg=True, guard_one=False, clamp_lo=False, clamp_hi=False, moves_one=False,
               finite_guard=False),
}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", list(_FLAG_SETS))
def test_compiled_extrapolation_is_one_loop_into_the_scratch_chunk(name, dtype):
    """inductor's C++ for the fused kernel: ONE parallel loop that stores the new chunk and makes all five
    sums, no chunk-sized temporary, and the eager numbers (the store-first pass at work; without it the
    store gets a second loop that recomputes the pipeline)."""
    if not K._compiler_available(torch.device("cpu")):
        pytest.skip("no C++ compiler for inductor on this machine")
    from torch._inductor.utils import run_and_get_code

    flags = _FLAG_SETS[name]
    g = torch.Generator().manual_seed(0)
    n = 1 << 16
    x0 = torch.randn(n, generator=g)
    x1 = x0 * torch.empty(n).uniform_(-3, 4, generator=g)
    x0[:2] = 0.0
    p, a = (torch.randn(n, generator=g).to(dtype) for _ in range(2))
    x1, x0 = x1.to(dtype), x0.to(dtype)
    lo, hi = (0.0, 1.0) if flags["nonneg"] else (-2.0, 3.0)  # the ratio clamp each flag set is meant for
    prm = torch.tensor([1.0, 1e-8, 1.0, lo, hi, 1e-8, 1.0, 3.5, 0.5])
    thr = torch.tensor(1e-8)
    torch._dynamo.reset()
    fn = torch.compile(K._extrapolate, dynamic=True, fullgraph=True, options=K.compile_options())
    out = torch.empty_like(p)
    sums, codes = run_and_get_code(lambda: fn(x1, x0, p, a, thr, prm, out, **flags))
    code = "\n".join(codes)
    assert code.count("#pragma omp for") == 1, code
    assert "empty_strided_cpu((s" not in code, code  # no buffer whose size is the chunk's
    ref = torch.empty_like(p)
    ref_sums = K._extrapolate(x1, x0, p, a, thr, prm, ref, **flags)
    torch.testing.assert_close(out, ref, rtol=1e-6 if dtype == torch.float32 else 1e-2, atol=1e-6)
    torch.testing.assert_close(sums, ref_sums, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shared", [False, True], ids=["threshold_per_tensor", "one_threshold"])
@pytest.mark.parametrize("last", [(64,), (512, 512)], ids=["eager", "compiled"])
def test_small_chunks_extrapolated_together_equal_one_call_each(monkeypatch, last, shared):
    """The batch of small chunks (one concatenated call, per-element thresholds, copied back, a
    non-contiguous tensor among them) gives each tensor what its own call gives, and the summed sums;
    below ``MIN_COMPILED_NUMEL`` elements in all the batch runs eagerly, from there on it is compiled."""
    monkeypatch.setenv(K.KERNELS_ENV, "auto")
    compiled = last == (512, 512)
    if compiled and not K._compiler_available(torch.device("cpu")):
        pytest.skip("no C++ compiler for inductor on this machine")
    kernel = K.Kernel(K._extrapolate)  # a fresh one: was it compiled by this call?
    monkeypatch.setattr(K, "extrapolate", kernel)
    g = torch.Generator().manual_seed(0)
    shapes = [(7,), (3, 5), (5, 3), last]
    assert (sum(math.prod(s) for s in shapes) >= K.MIN_COMPILED_NUMEL) == compiled
    x0s = [torch.randn(s, generator=g) for s in shapes]
    x1s = [x * torch.empty(s).uniform_(-0.5, 1.5, generator=g) for x, s in zip(x0s, shapes)]
    ps = [torch.randn(s, generator=g) for s in shapes]
    ps[2] = torch.randn(3, 5, generator=g).t()  # non-contiguous parameter
    a_s = [torch.randn(s, generator=g) for s in shapes]
    thrs = torch.tensor([0.3, 0.3, 0.3, 0.3] if shared else [1e-8, 0.3, 0.0, 0.5])
    prm = torch.tensor([1.0, 1e-8, 0.0, 0.0, 1.0, 1e-8, 1.0, 3.5, 0.5])
    flags = dict(K=5, floored=False, nonneg=True, guard_one=False, clamp_lo=False, clamp_hi=False, moves_one=False,
                 finite_guard=False)
    ref_p, ref_sums = [], []
    for x1, x0, p, a, t in zip(x1s, x0s, ps, a_s, thrs):
        out = p.clone()
        ref_sums.append(K._extrapolate(x1, x0, p, a, t, prm, out, **flags))
        ref_p.append(out)
    rule = GXPORule([torch.nn.Parameter(torch.zeros(1))], {"K": 5})
    got_p = [p.clone() for p in ps]
    got_p[2] = torch.randn(3, 5).t()
    got_p[2].copy_(ps[2])
    starts = [100]  # where each chunk starts among all coordinates
    for s in shapes[:-1]:
        starts.append(starts[-1] + math.prod(s))
    sampled = ([], [], [], [])
    stride = 4
    items = [(x1, x0, p, a, k, off) for k, (x1, x0, p, a, off) in enumerate(zip(x1s, x0s, got_p, a_s, starts))]
    sums = rule._extrapolate_small(items, thrs[0] if shared else thrs, prm, flags, stride, sampled)
    for got, ref in zip(got_p, ref_p):
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7)
    # the median's samples: every coordinate whose global position is a multiple of the stride
    want = [(start + j, float(x1.reshape(-1)[j]), float(thr)) for x1, start, thr in zip(x1s, starts, thrs)
            for j in range(x1.numel()) if (start + j) % stride == 0]
    got = list(zip(torch.cat(sampled[3]).tolist(), torch.cat(sampled[0]).tolist(), torch.cat(sampled[2]).tolist()))
    assert got == want
    torch.testing.assert_close(sums, torch.stack(ref_sums).sum(0), rtol=1e-6, atol=1e-7)
    assert sums[0].item() == sum(int((x.abs() > t).sum()) for x, t in zip(x0s, thrs)) < sum(x.numel() for x in x0s)
    assert (kernel._compiled is not None) == compiled


@pytest.mark.slow
@pytest.mark.parametrize("n", [3 * K.ROW, 70 * K.ROW + 13], ids=["rows", "rows+tail"])
def test_compiled_reductions_sum_rows_without_the_cascade_helper(n):
    """The reduction-only kernels (post-step norm, relative threshold, corrective dots) compile to row sums:
    no ``cascade_sum_combine`` in inductor's C++ (it held a compiled sum of squares to about half the
    speed of a plain read), the tail beyond the last full row counted once, float64 references met."""
    if not K._compiler_available(torch.device("cpu")):
        pytest.skip("no C++ compiler for inductor on this machine")
    from torch._inductor.utils import run_and_get_code

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, generator=g), torch.randn(n, generator=g)
    x[5], x[-1] = float("inf"), float("nan")  # finite_sumsq counts them as 0
    xf = torch.where(torch.isfinite(x), x, 0.0).double()
    cases = {
        "sumsq": (K._sumsq, (y,), [(y.double() ** 2).sum()]),
        "finite_sumsq": (K._finite_sumsq, (x,), [(xf ** 2).sum()]),
        "dots": (K._dots, (xf.float(), y), [(xf * y.double()).sum(), (xf ** 2).sum(), (y.double() ** 2).sum()]),
    }
    for name, (fn, args, ref) in cases.items():
        torch._dynamo.reset()
        compiled = torch.compile(fn, dynamic=True, fullgraph=True, options=K.compile_options())
        got, codes = run_and_get_code(lambda: compiled(*args))
        code = "\n".join(codes)
        assert "cascade_sum_combine" not in code, (name, code)
        torch.testing.assert_close(got, torch.stack(ref).reshape(got.shape), rtol=1e-6, atol=1e-6 * n**0.5)  # dot ~ 0
        torch.testing.assert_close(got, fn(*args), rtol=1e-6, atol=1e-6 * n**0.5)  # eager: ATen's sum


@pytest.mark.parametrize("nb", [False, True], ids=["device_buffers", "host_buffers"])
@pytest.mark.parametrize("scale", [1.0, 4.0], ids=["unscaled", "grad_scaler"])
def test_g0_snapshot_is_the_unscaled_gradient(nb, scale):
    """g0 <- grad / scale, zero where no gradient arrived; ``nb`` (host buffers on a GPU) divides on the
    device before the non-blocking copy, the other path after a multi-tensor copy: the same values."""
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in ((5, 3), (7,), (4,))]
    for p in params[:2]:
        p.grad = torch.randn(p.shape, generator=g)
    g0 = [torch.full_like(p, 9.0) for p in params]
    rule = GXPORule(params, {"K": 5})
    rule._snapshot_grad(params, g0, scale, nb)
    torch.testing.assert_close(g0[0], params[0].grad / scale, rtol=0, atol=0)
    torch.testing.assert_close(g0[1], params[1].grad / scale, rtol=0, atol=0)
    assert torch.equal(g0[2], torch.zeros(4))


def test_chunk_sums_move_the_second_column_of_every_chunk():
    """The corrective dots with host buffers: ``move`` brings each g0 chunk to the device, for a chunk
    reduced alone and for a batch alike; the sums equal one float64 reference."""
    g = torch.Generator().manual_seed(0)
    gs = [torch.randn(n, generator=g) for n in (40, 7, 300)]
    bs = [torch.randn(n, generator=g) for n in (40, 7, 300)]
    moved = []
    got = rules._chunk_sums(K.dots, 3, list(zip(gs, bs)), torch.device("cpu"),
                            move=lambda c: moved.append(c.numel()) or c.clone())
    ref = [sum(float((a.double() * b.double()).sum()) for a, b in zip(gs, bs)),
           sum(float(a.double().square().sum()) for a in gs), sum(float(b.double().square().sum()) for b in bs)]
    torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64), rtol=1e-6, atol=1e-6)
    assert sorted(moved) == [7, 40, 300]


@pytest.mark.slow
def test_a_dispatch_mode_runs_the_kernels_eagerly_and_leaves_compilation_on(monkeypatch):
    """Counting syncs (a TorchDispatchMode, which torch.compile cannot trace under) must not switch the
    compiled kernels off for the rest of the process: benchmarks/bench_gpu.py counts each rule's syncs
    between its timing runs, and every run after the first count was timed with the eager kernels."""
    if not K._compiler_available(torch.device("cpu")):
        pytest.skip("no C++ compiler for inductor on this machine")
    monkeypatch.setenv(K.KERNELS_ENV, "auto")
    monkeypatch.setattr(K.Kernel, "_disabled", {})
    kernel = K.Kernel(K._sumsq)
    x = torch.randn(K.MIN_COMPILED_NUMEL, generator=torch.Generator().manual_seed(0))
    ref = x.double().square().sum()
    with SyncCounter() as c:
        inside = kernel(x)
    assert c.count == 0, c.ops
    assert K.Kernel._disabled == {} and kernel._compiled is None  # ran eagerly, tried no compile
    assert kernel.compiled_for(x)
    outside = kernel(x)
    assert kernel._compiled is not None and K.Kernel._disabled == {}
    torch.testing.assert_close(inside.reshape(()), ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(outside.reshape(()), ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("mode", ["eager", "auto"])
def test_tensor_sums_are_each_tensors_finite_sum_of_squares(monkeypatch, mode):
    """The relative-RMS thresholds' per-tensor sums: tensors compiled alone (``auto``, where a compiler is
    present), small ones batched and split back by tensor, a non-contiguous one, non-finite entries as 0."""
    monkeypatch.setenv(K.KERNELS_ENV, mode)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, generator=g) for n in (7, K.MIN_COMPILED_NUMEL + 5, 1, 300)]
    xs.append(torch.randn(6, 5, generator=g).t())  # not contiguous
    xs[0][3], xs[3][10], xs[1][-1] = float("inf"), float("nan"), float("-inf")
    got = rules._tensor_sums(xs, torch.device("cpu"))
    ref = torch.stack([torch.where(torch.isfinite(x), x, 0.0).double().square().sum() for x in xs])
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=0)
