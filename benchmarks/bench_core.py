"""Cost of the update rules' own arithmetic, side by side in one run (CPU or GPU); prints, asserts nothing.

For each batch size: the time of one backward pass (forward + backward of the fixed mini-batch), one
optimizer step, and the GXPO / SFPO rule's own work per active update (the rule's wall time minus
the time spent inside its closures), plus the extra bytes the rule holds relative to the trainable
parameters. GXPO runs once per option that changes its memory or work (both variants,
``optimizer_state=transactional``, ``ratio_source=adam_direction``); the extra bytes of each option
are printed separately: the parameter-sized snapshot buffers (two for ``carry``; three with
``adam_direction``) and, for ``transactional``, the optimizer-state snapshot (AdamW: two moments
per parameter plus step counts).

    python benchmarks/bench_core.py [--width 1024 --depth 4 --batches 512,4096 --repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
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


def measure(rule_name, width, depth, batch, repeats, dev, host_buffers=False):
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
    rule.step(cg, st, optimizer_state=hooks)  # warm-up (allocator, kernels)
    own, total, passes = [], [], []
    for _ in range(repeats):
        acc["pass"].clear()
        acc["opt"].clear()
        sync(dev)
        t = time.perf_counter()
        rule.step(cg, st, optimizer_state=hooks)
        sync(dev)
        dt = time.perf_counter() - t
        total.append(dt)
        own.append(dt - sum(acc["pass"]) - sum(acc["opt"]))
        passes.append(statistics.median(acc["pass"]))
    n_params = sum(p.numel() for p in model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    extra = rule.buffer_bytes() if isinstance(rule, GXPORule) else (param_bytes if isinstance(rule, SFPORule) else 0)
    state_extra = 0
    if isinstance(rule, GXPORule) and rule.config.optimizer_state == "transactional":
        state_extra = snapshot_bytes(hooks.save())
    return {
        "rule": rule_name, "batch": batch, "params": n_params, "pass_s": statistics.median(passes),
        "own_s": statistics.median(own), "total_s": statistics.median(total), "extra_bytes": extra,
        "state_bytes": state_extra, "param_bytes": param_bytes,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--batches", default="512,4096")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    print(f"device={dev} torch={torch.__version__} threads={torch.get_num_threads()} width={args.width} depth={args.depth}")
    print(f"{'rule':16} {'batch':>6} {'params':>10} {'1 pass ms':>10} {'rule own ms':>12} {'own/pass':>9} "
          f"{'update ms':>10} {'x grpo':>7} {'extra/params':>13} {'buffer bytes':>13} {'opt-state bytes':>16}")
    for b in (int(v) for v in args.batches.split(",")):
        rows = [measure(r, args.width, args.depth, b, args.repeats, dev) for r in ("grpo", "sfpo", *GXPO_OPTIONS)]
        base = rows[0]["total_s"]
        for r in rows:
            print(f"{r['rule']:16} {r['batch']:>6} {r['params']:>10} {1e3 * r['pass_s']:>10.2f} {1e3 * r['own_s']:>12.2f} "
                  f"{r['own_s'] / r['pass_s']:>9.3f} {1e3 * r['total_s']:>10.2f} {r['total_s'] / base:>7.2f} "
                  f"{(r['extra_bytes'] + r['state_bytes']) / r['param_bytes']:>13.2f} {r['extra_bytes']:>13} "
                  f"{r['state_bytes']:>16}")
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            for hb in (False, True):
                torch.cuda.empty_cache()
                before = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                r = measure("gxpo", args.width, args.depth, b, 2, dev, host_buffers=hb)
                print(f"  gxpo host_buffers={hb}: peak device bytes above start {torch.cuda.max_memory_allocated() - before}")


if __name__ == "__main__":
    main()
