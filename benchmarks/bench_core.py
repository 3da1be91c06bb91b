"""Cost of the update rules' own arithmetic, side by side in one run (CPU or GPU); prints, asserts nothing.

For each batch size: the time of one backward pass (forward + backward of the fixed mini-batch), one
optimizer step, and the GXPO / SFPO rule's own work per active update (the rule's wall time minus
the time spent inside its closures), plus the extra bytes the rule holds relative to the trainable
parameters. GXPO runs once per option that changes its memory or work (both variants,
``optimizer_state=transactional``, ``ratio_source=adam_direction``); the extra bytes of each option
are printed separately: the parameter-sized snapshot buffers (two for ``carry``; three with
``adam_direction``) and, for ``transactional``, the optimizer-state snapshot (AdamW: two moments
per parameter plus step counts).

It also prints the rule's own work against a memory floor: the time of 12 parameter-sized passes
(4 ``torch.add`` over 12 distinct flat buffers of the parameters' size, as the rule's passes are over
distinct tensors), measured in the same run with the rules' repeats interleaved round-robin; one
process per thread count (``--threads 1,0``: one and all). The floor of earlier runs, the same adds
over 3 reused buffers, is printed under each table: a cache that holds 3 parameter-sized buffers
(this machine's L3 holds 3 x 67 MB, not 3 x 268 MB at ``--width 4096``) makes that one a cache floor.

    python benchmarks/bench_core.py [--width 2048 --depth 3 --batches 256 --repeats 5 --threads 1,0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from verl_ext.core import GRPORule, GXPORule, SFPORule, TorchOptimizerState

GXPO_OPTIONS = {
    "gxpo": {},
    "gxpo_authors": {"variant": "authors"},
    "gxpo_authors_tx": {"variant": "authors", "optimizer_state": "transactional"},
    "gxpo_adam_dir": {"ratio_source": "adam_direction"},
}


def snapshot_bytes(snapshot) -> int:
    """Bytes of the tensors in a TorchOptimizerState snapshot."""
    return sum(v.numel() * v.element_size() for st in snapshot["state"].values() for v in st.values()
               if isinstance(v, torch.Tensor))


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def build(width, depth, dev, seed=0):
    torch.manual_seed(seed)
    layers = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.GELU()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, width)).to(dev)


def timed_closures(model, opt, x, y, acc):
    params = [p for p in model.parameters() if p.requires_grad]

    def compute_grads():
        sync(x.device)
        t = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        torch.nn.functional.mse_loss(model(x), y).backward()
        sync(x.device)
        acc["pass"].append(time.perf_counter() - t)
        return {"entropy": 1.0}

    def optimizer_step():
        sync(x.device)
        t = time.perf_counter()
        n = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sync(x.device)
        acc["opt"].append(time.perf_counter() - t)
        return float(n)

    return compute_grads, optimizer_step


PASSES = {  # parameter-sized memory passes of the rule's own work per active update (reads + writes)
    # theta0 copy 2, g0 snapshot 2, post-step grad norm 1, the fused extrapolation 5 (reads x1, x0, theta, theta0,
    # writes the new chunk) and that chunk's copy into theta 2, corrective dots 2
    "gxpo": 14,
    "gxpo_authors": 14,
    "gxpo_authors_tx": 14 + 8,  # + optimizer-state snapshot (two moments: read 2, write 2) and restore (4)
    "gxpo_adam_dir": 2 + 2 + 2 + 5 + 5 + 2 + 2,  # + theta1 copy 2, the direction kernel 5 (no post-step norm)
    "sfpo": 2 + 4,  # theta0 copy 2, reposition 4
    "grpo": 0,
}
FLOOR_PASSES = 12


def setup(rule_name, width, depth, batch, dev, host_buffers=False):
    """A model, optimizer and rule; returns ``once()`` -> (update s, rule's own s, one pass s) and its sizes."""
    model = build(width, depth, dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, width, device=dev)
    y = torch.randn(batch, width, device=dev)
    hooks = TorchOptimizerState(opt)
    if rule_name in GXPO_OPTIONS:
        cfg = {"K": 5, "shutoff": "never", "host_buffers": host_buffers, **GXPO_OPTIONS[rule_name]}
        rule = GXPORule(model.parameters(), cfg, clip_grad=1.0)
    elif rule_name == "sfpo":
        rule = SFPORule(model.parameters(), {"K": 3, "shutoff": "never"})
    else:
        rule = GRPORule(model.parameters())
    acc = {"pass": [], "opt": []}
    cg, st = timed_closures(model, opt, x, y, acc)

    def once():
        acc["pass"].clear()
        acc["opt"].clear()
        sync(dev)
        t = time.perf_counter()
        rule.step(cg, st, optimizer_state=hooks)
        sync(dev)
        dt = time.perf_counter() - t
        return dt, dt - sum(acc["pass"]) - sum(acc["opt"]), statistics.median(acc["pass"])

    once()  # warm-up (allocator, Adam state, kernel compilation)
    once()
    n_params = sum(p.numel() for p in model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    extra = rule.buffer_bytes() if isinstance(rule, GXPORule) else (param_bytes if isinstance(rule, SFPORule) else 0)
    state_extra = 0
    if isinstance(rule, GXPORule) and rule.config.optimizer_state == "transactional":
        state_extra = snapshot_bytes(hooks.save())
    info = {"rule": rule_name, "batch": batch, "params": n_params, "extra_bytes": extra, "state_bytes": state_extra,
            "param_bytes": param_bytes}
    return once, info


def floor_once(n: int, dev, distinct: bool = True):
    """Time of ``FLOOR_PASSES`` parameter-sized passes: FLOOR_PASSES / 3 ``torch.add``.

    ``distinct``: over FLOOR_PASSES distinct buffers, as the rule's passes are (theta, theta0, g, g0 and the
    scratch chunk are separate tensors), so no pass finds its bytes in a cache the previous pass filled.
    Otherwise over three buffers reused by every add (the floor earlier runs printed): where a cache
    holds three parameter-sized buffers (this machine's 300 MB L3 holds 3 x 67 MB), that floor times
    the cache, not memory.
    """
    bufs = [torch.randn(n, device=dev) for _ in range(FLOOR_PASSES if distinct else 3)]
    triples = [bufs[3 * i:3 * i + 3] if distinct else bufs for i in range(FLOOR_PASSES // 3)]

    def once():
        sync(dev)
        t = time.perf_counter()
        for a, b, c in triples:
            torch.add(a, b, out=c)
        sync(dev)
        return time.perf_counter() - t

    once()
    return once


def run(args, dev):
    kernels = os.environ.get("GXPO_KERNELS", "auto")
    print(f"device={dev} torch={torch.__version__} threads={torch.get_num_threads()} width={args.width} "
          f"depth={args.depth} GXPO_KERNELS={kernels} repeats={args.repeats} (interleaved; medians)")
    print(f"{'rule':16} {'batch':>6} {'params':>10} {'1 pass ms':>10} {'own ms':>8} {'floor ms':>9} {'own/floor':>10} "
          f"{'x paper':>8} {'own passes':>11} {'update ms':>10} {'x grpo':>7} {'extra/params':>13}")
    for b in (int(v) for v in args.batches.split(",")):
        names = ("grpo", "sfpo", *GXPO_OPTIONS)
        runs = {r: setup(r, args.width, args.depth, b, dev) for r in names}
        floor = floor_once(runs["grpo"][1]["params"], dev)
        floor_reused = floor_once(runs["grpo"][1]["params"], dev, distinct=False)
        res = {r: [] for r in names}
        floors, floors_reused = [], []
        for _ in range(args.repeats):  # round-robin: drift in machine load hits every rule alike
            for r in names:
                res[r].append(runs[r][0]())
                floors.append(floor())
                floors_reused.append(floor_reused())
        fl = statistics.median(floors)
        fl_reused = statistics.median(floors_reused)
        med = {r: [statistics.median(x[i] for x in res[r]) for i in range(3)] for r in names}
        for r in names:
            info = runs[r][1]
            total, own, one = med[r]
            own = max(own, 0.0) if r != "grpo" else 0.0
            print(f"{r:16} {b:>6} {info['params']:>10} {1e3 * one:>10.2f} {1e3 * own:>8.2f} {1e3 * fl:>9.2f} "
                  f"{own / fl:>10.2f} {own / med['gxpo'][1]:>8.2f} {PASSES[r]:>11} {1e3 * total:>10.2f} "
                  f"{total / med['grpo'][0]:>7.2f} {(info['extra_bytes'] + info['state_bytes']) / info['param_bytes']:>13.2f}")
        print(f"  floor over 3 reused buffers: {1e3 * fl_reused:.2f} ms; gxpo own / that floor "
              f"{med['gxpo'][1] / fl_reused:.2f}, gxpo_authors {med['gxpo_authors'][1] / fl_reused:.2f}")
        if dev.type == "cuda":
            for hb in (False, True):
                torch.cuda.empty_cache()
                before = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                once, _ = setup("gxpo", args.width, args.depth, b, dev, host_buffers=hb)
                once()
                print(f"  gxpo host_buffers={hb}: peak device bytes above start {torch.cuda.max_memory_allocated() - before}")
    print(f"  own = the rule's work per active update (update minus its passes and optimizer steps); floor = "
          f"{FLOOR_PASSES} parameter-sized memory passes ({FLOOR_PASSES // 3} torch.add over {FLOOR_PASSES} distinct "
          f"buffers); own passes = the "
          f"parameter-sized reads + writes the rule makes; goal: gxpo own/floor <= 1.5, gxpo_authors x paper <= 1.2")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--batches", default="256")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", default="1,0", help="torch threads, comma-separated (0: all); each in its own process")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    threads = [int(t) for t in args.threads.split(",")]
    if len(threads) == 1:
        if threads[0]:
            torch.set_num_threads(threads[0])
        run(args, dev)
        return
    for t in threads:  # a fresh process per thread count: compiled CPU kernels fix their thread count when built
        env = dict(os.environ)
        env.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"gxpo_bench_inductor_t{t}"))
        env["TORCHINDUCTOR_CACHE_DIR"] += f"_t{t}" if not env["TORCHINDUCTOR_CACHE_DIR"].endswith(f"_t{t}") else ""
        argv = [a for a in sys.argv[1:]]
        if "--threads" in argv:
            k = argv.index("--threads")
            del argv[k:k + 2]
        argv = [a for a in argv if not a.startswith("--threads=")]
        subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--threads", str(t)], env=env, check=True)
        print()


if __name__ == "__main__":
    main()
