"""GRPO vs SFPO vs GXPO on a Qwen2.5-1.5B-shaped model under torch FSDP2: time, memory, precision.

Runs on a bare GPU machine: it needs only torch, transformers and this project's pure-torch core
(``verl_ext.core``; no verl, Ray or vLLM is imported anywhere on its path). One process builds a
randomly initialised causal LM from a config written here by hand (no download), wraps it with
FSDP2 (``fully_shard`` per decoder layer and at the root, a one-rank process group), and drives
the core update rules with closures shaped like verl's engine primitives: ``compute_grads(phase)``
(zero grad, micro-batched PPO-clipped GRPO loss, backward; under fp16 the loss is scaled by a
``ShardedGradScaler`` and the scale is returned as ``grad_scale``) and ``optimizer_step()``
(unscale, clip the global norm, AdamW step, a scaler-skipped step reported as a non-finite norm).

It prints, in one run:

1. seconds per update of GRPO, SFPO (K=3) and GXPO-active (variants ``paper_text`` and
   ``authors``; ``paper_text`` also with ``host_buffers``), as ratios to GRPO, with backward passes
   per update; the goal is GXPO-active <= 3.05x GRPO;
2. peak allocated device memory of each, and the extra over GRPO in trainable-parameter copies
   (goal: exactly 2 for GXPO, 0 with host buffers); on CPU, where torch keeps no allocator
   statistics, the rule's own buffer accounting instead;
3. GXPO's ratio statistics of one active update in bf16 and in fp16 (with the grad scaler) beside
   fp32 from the same weights and batch.

    python benchmarks/bench_gpu.py                         # GPU, Qwen2.5-1.5B shape, bf16 timing
    python benchmarks/bench_gpu.py --size tiny --device cpu  # small and fast (CI runs this)

Asserts nothing: the numbers are printed for a person (or a test) to read.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import socket
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(HERE))

from verl_ext.core import build_update_rule  # noqa: E402  (pure torch)
from verl_ext.testing.sync_count import SyncCounter  # noqa: E402  (pure torch)

GOAL_TIME_RATIO = 3.05
GOAL_EXTRA_COPIES = 2.0
GOAL_HOST_BUFFERS = 1.10  # host_buffers: its copies overlap compute, so <= 1.10x the device-buffer GXPO time

# Qwen2.5-1.5B (its config.json) and a tiny model of the same family for CPU runs
SIZES = {
    "1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                 rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                 rope_theta=10_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ---------------------------------------------------------------------------------------------
# Model, batch and loss
# ---------------------------------------------------------------------------------------------


def init_process_group(device: str) -> None:
    if dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=0, world_size=1)


def build_model(size: str, device: str, param_dtype: torch.dtype, seed: int):
    """The random model (fp32 masters) wrapped with FSDP2 on a one-rank mesh, compute in ``param_dtype``."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**SIZES[size], attn_implementation="sdpa", use_cache=False)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg).to(torch.float32)
    mesh = init_device_mesh(device, (1,), mesh_dim_names=("fsdp",))
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T)
    response_mask: torch.Tensor  # (B, T-1): which next-token predictions are response tokens
    advantages: torch.Tensor  # (B,)
    old_log_probs: torch.Tensor | None = None  # (B, T-1), at the initial weights


def make_batch(vocab: int, batch: int, seq: int, response: int, device: str, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    mask = torch.zeros(batch, seq - 1)
    for i in range(batch):  # variable response lengths, at least half of the response window
        n = int(torch.randint(response // 2, response + 1, (1,), generator=g))
        mask[i, seq - 1 - response : seq - 1 - response + n] = 1
    adv = torch.randn(batch, generator=g)
    adv = (adv - adv.mean()) / (adv.std() + 1e-6)  # GRPO-normalised outcome advantages
    return Batch(ids.to(device), mask.to(device), adv.to(device))


def token_log_probs(model, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids).logits[:, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


def ppo_loss(model, b: Batch, rows: slice, clip: float = 0.2) -> torch.Tensor:
    """verl's default actor loss without KL: PPO-clipped policy gradient, token-mean over the mini-batch."""
    lp = token_log_probs(model, b.input_ids[rows])
    mask = b.response_mask[rows]
    ratio = torch.exp(lp - b.old_log_probs[rows])
    adv = b.advantages[rows, None]
    pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip))
    return (pg * mask).sum() / b.response_mask.sum()


# ---------------------------------------------------------------------------------------------
# The engine primitives the rules drive
# ---------------------------------------------------------------------------------------------


class Engine:
    """``compute_grads`` / ``optimizer_step`` with the contract of verl's FSDP engine."""

    def __init__(self, model, batch: Batch, micro_batches: int, lr: float, clip_grad: float, fp16: bool):
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        self.model, self.batch, self.clip_grad = model, batch, clip_grad
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.01, betas=(0.9, 0.999))
        n = batch.input_ids.shape[0]
        step = max(1, n // micro_batches)
        self.rows = [slice(i, min(n, i + step)) for i in range(0, n, step)]
        device = batch.input_ids.device.type
        self.scaler = ShardedGradScaler(device=device, growth_interval=400) if fp16 else None
        self.passes = 0

    @torch.no_grad()
    def refresh_old_log_probs(self) -> None:
        """``old_log_probs`` at the current weights, as a new rollout's would be (PPO ratio 1 at probe 1)."""
        self.batch.old_log_probs = torch.cat([token_log_probs(self.model, self.batch.input_ids[r]) for r in self.rows])
        self.model.reshard()  # FSDP2 leaves the root's parameters unsharded after a forward without backward

    def compute_grads(self, phase: str = "plain"):
        self.optimizer.zero_grad()
        for rows in self.rows:
            loss = ppo_loss(self.model, self.batch, rows)
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        self.passes += 1
        return {"grad_scale": float(self.scaler.get_scale())} if self.scaler is not None else {}

    def optimizer_step(self) -> float:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        norm = float(norm)
        if self.scaler is not None:
            before = float(self.scaler.get_scale())
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if float(self.scaler.get_scale()) < before:
                return float("nan")  # the scaler skipped the step
        elif math.isfinite(norm):
            self.optimizer.step()
        else:
            self.optimizer.zero_grad()
        return norm


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------

RULES = {  # label -> (rule, config section)
    "grpo": ("grpo", {}),
    "sfpo K=3": ("sfpo", dict(K=3, shutoff="never")),
    "gxpo paper_text": ("gxpo", dict(variant="paper_text", shutoff="never")),
    "gxpo authors": ("gxpo", dict(variant="authors", shutoff="never")),
    "gxpo paper_text host_buffers": ("gxpo", dict(variant="paper_text", shutoff="never", host_buffers=True)),
}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def make_rule(label: str, engine: Engine, clip_grad: float):
    name, section = RULES[label]
    kw = {"gxpo": section} if name == "gxpo" else {"sfpo": section} if name == "sfpo" else {}
    return build_update_rule(name, engine.params, clip_grad=clip_grad, **kw)


def prepare(args, param_dtype, fp16: bool, seed_batch: Batch | None = None, batch: int | None = None):
    model = build_model(args.size, args.device, param_dtype, args.seed)
    b = seed_batch or make_batch(SIZES[args.size]["vocab_size"], batch or args.batch[0], args.seq, args.response,
                                 args.device, args.seed)
    eng = Engine(model, b, args.micro_batches, args.lr, args.clip_grad, fp16)  # captures the sharded parameters
    if b.old_log_probs is None:  # at the first model's weights (every run starts from the same ones)
        eng.refresh_old_log_probs()
    return model, b, eng


def release(device: str, *objs) -> None:
    """Free a model before the next one: FSDP2 modules, their hooks and the optimizer sit in reference
    cycles, so ``del`` alone frees nothing; drop the big references, collect, and return the cache."""
    for o in objs:
        if isinstance(o, Engine):
            o.optimizer.state.clear()
            o.optimizer.param_groups.clear()
            o.params = []
            o.model = None
        elif isinstance(o, torch.nn.Module):
            for prm in o.parameters():
                prm.grad = None
    del objs
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def count_syncs(rule, eng: Engine) -> int:
    """Host syncs the rule itself makes in one update (the engine's closures are not counted)."""
    eng.refresh_old_log_probs()
    with SyncCounter() as c:
        rule.step(c.closure(eng.compute_grads), c.closure(eng.optimizer_step))
    return c.count


def time_rules(args, batch: int) -> dict:
    """One model; every rule drives it in turn, repeats interleaved round-robin (machine drift hits all alike)."""
    dtype = DTYPES[args.dtype]
    model, b, eng = prepare(args, dtype, args.dtype == "fp16", batch=batch)
    rules = {label: make_rule(label, eng, args.clip_grad) for label in RULES}
    for rule in rules.values():  # warm-up: Adam state, kernels (compiled once), pinned host buffers
        rule.step(eng.compute_grads, eng.optimizer_step)
    times = {k: [] for k in rules}
    peaks = {k: [] for k in rules}
    passes = {k: 0 for k in rules}
    for _ in range(args.repeats):
        for label, rule in rules.items():
            eng.refresh_old_log_probs()  # each update sees a fresh batch's ratio (not timed, like verl's log-prob stage)
            sync(args.device)
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            p0 = eng.passes
            t = time.perf_counter()
            rule.step(eng.compute_grads, eng.optimizer_step)
            sync(args.device)
            times[label].append(time.perf_counter() - t)
            passes[label] += eng.passes - p0
            if args.device == "cuda":
                peaks[label].append(torch.cuda.max_memory_allocated())
    param_bytes = sum(p.to_local().numel() * p.to_local().element_size() if hasattr(p, "to_local") else
                      p.numel() * p.element_size() for p in eng.params)
    out = {}
    for label, rule in rules.items():
        out[label] = dict(
            seconds=statistics.median(times[label]), passes=passes[label] / args.repeats, param_bytes=param_bytes,
            peak=max(peaks[label]) if peaks[label] else None, syncs=count_syncs(rule, eng),
            tokens=int(b.input_ids.numel()),
            buffer_bytes=(0 if getattr(rule.config, "host_buffers", False) else rule.buffer_bytes())
            if hasattr(rule, "buffer_bytes") else 0,
        )
    release(args.device, eng, model)
    del rules, eng, model
    release(args.device)
    return out


RATIO_STATS = ("retention_ratio_mean", "retention_ratio_median", "scale_mean", "inactive_frac", "cos_g0_gcorr",
               "probe_grad_norm_0", "probe_grad_norm_1")


def precision_stats(args) -> dict:
    """One active GXPO update per (variant, dtype) from the same weights and batch.

    fp16: the grad scaler is warmed first (plain steps at a copy of the weights are not wanted, so the
    warm-up only runs backward passes and lets the scaler back off until the gradient is finite), and
    an update whose probe overflowed anyway is retried (up to 3 times) after the scaler backed off.
    """
    out = {}
    for variant in ("paper_text", "authors"):
        batch = None
        for dname in ("fp32", "bf16", "fp16"):
            model, batch, eng = prepare(args, DTYPES[dname], dname == "fp16", batch)
            if eng.scaler is not None:
                warm_scaler(eng)
            rule = build_update_rule("gxpo", eng.params, gxpo=dict(variant=variant, shutoff="never"),
                                     clip_grad=args.clip_grad)
            m = {}
            for _ in range(3):
                m = rule.step(eng.compute_grads, eng.optimizer_step)
                if math.isfinite(m.get("gxpo/retention_ratio_mean", float("nan"))):
                    break
            out[(variant, dname)] = {k: m.get(f"gxpo/{k}", float("nan")) for k in RATIO_STATS}
            release(args.device, eng, model)
            del rule, eng, model
            release(args.device)
    return out


def warm_scaler(eng: Engine, tries: int = 24) -> None:
    """Back the fp16 loss scale off until a backward pass at the current weights is finite (no optimizer step)."""
    for _ in range(tries):
        eng.compute_grads("warmup")
        eng.passes -= 1
        finite = all(bool(torch.isfinite(p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad).all())
                     for p in eng.params if p.grad is not None)
        eng.optimizer.zero_grad()
        if finite:
            return
        eng.scaler.update(eng.scaler.get_scale() * eng.scaler.get_backoff_factor())


def print_timing_header(args, timing: dict) -> None:
    dev = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    n_params = timing["grpo"]["param_bytes"] // 4
    print(f"device={dev} size={args.size} trainable params={n_params / 1e6:.1f}M dtype={args.dtype} "
          f"seq={args.seq} (response<={args.response}, {args.micro_batches} micro-batches) repeats={args.repeats} "
          f"(interleaved; medians)")
    print()
    print("1-2. time, memory and host syncs per update (GXPO/SFPO always active)")
    print(f"{'rule':30} {'tokens':>7} {'s/update':>9} {'x grpo':>7} {'passes':>7} {'peak GB':>8} {'extra copies':>13} "
          f"{'syncs':>6} {'goal':>26}")


def print_timing(timing: dict) -> None:
    """The rows of one batch size (printed as soon as it is measured: a run cut off by the time limit
    still shows the sizes it finished)."""
    base = timing["grpo"]
    for label, r in timing.items():
        ratio = r["seconds"] / base["seconds"]
        if r["peak"] is not None:
            extra = (r["peak"] - base["peak"]) / r["param_bytes"]
            peak = f"{r['peak'] / 2**30:8.2f}"
            extra_s = f"{extra:13.2f}"
        else:  # CPU: torch keeps no allocator statistics; the rule's own persistent buffers
            peak = f"{'n/a':>8}"
            extra_s = f"{r['buffer_bytes'] / r['param_bytes']:12.2f}*"
        goal = ""
        if "host_buffers" in label:
            goal = f"<={GOAL_HOST_BUFFERS}x gxpo, 0 copies"
            ratio_hb = r["seconds"] / timing["gxpo paper_text"]["seconds"]
            goal += f" ({ratio_hb:.2f}x)"
        elif label.startswith("gxpo"):
            goal = f"<={GOAL_TIME_RATIO}x, {GOAL_EXTRA_COPIES:.0f} copies"
        print(f"{label:30} {r['tokens']:>7} {r['seconds']:9.3f} {ratio:7.2f} {r['passes']:7.1f} {peak} {extra_s} "
              f"{r['syncs']:>6} {goal:>26}")


def print_timing_footer(timing: dict) -> None:
    if timing["grpo"]["peak"] is None:
        print("  * CPU: persistent rule buffers / trainable-parameter bytes (no device allocator statistics)")
    print("  syncs: host-device synchronisations the rule itself makes in one update (the engine's closures excluded)")
    print()


def print_precision(prec: dict) -> None:
    print("3. GXPO ratio statistics of one active update: bf16 and fp16 (grad scaler) against fp32")
    cols = RATIO_STATS
    print(f"{'variant':11} {'dtype':5} " + " ".join(f"{c:>22}" for c in cols))
    for (variant, dname), stats in prec.items():
        ref = prec[(variant, "fp32")]
        cells = []
        for c in cols:
            v = stats[c]
            cells.append(f"{v:22.4f}" if dname == "fp32" else f"{v:12.4f} ({v - ref[c]:+8.4f})")
        print(f"{variant:11} {dname:5} " + " ".join(cells))
    print("  (in brackets: difference to fp32)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="1.5b")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="compute dtype of the timing runs "
                    "(default bf16 on cuda, fp32 on cpu)")
    ap.add_argument("--batch", default="8", help="sequences per update, comma-separated for a sweep of tokens per "
                    "update (e.g. 8,32,64 at --seq 1024: 8k-64k tokens; default 8)")
    ap.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 1024; tiny 48)")
    ap.add_argument("--response", type=int, default=None, help="response window (default 768; tiny 24)")
    ap.add_argument("--micro-batches", type=int, default=None, help="micro-batches per pass (default 4; tiny 2)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--clip-grad", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads on cpu (0: torch's default)")
    args = ap.parse_args(argv)
    tiny = args.size == "tiny"
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    args.batch = [int(v) for v in str(args.batch).split(",") if v.strip()]
    args.seq = args.seq or (48 if tiny else 1024)
    args.response = args.response or (24 if tiny else 768)
    args.micro_batches = args.micro_batches or (2 if tiny else 4)
    if args.lr == 1e-5 and tiny:
        args.lr = 1e-3  # a tiny random model needs a visible step for the ratios to mean anything
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available (use --device cpu)")
    sys.stdout.reconfigure(line_buffering=True)  # each table row as it is printed, also into a pipe
    init_process_group(args.device)
    t0 = time.perf_counter()
    try:
        for i, b in enumerate(args.batch):  # each size printed when measured
            timing = time_rules(args, b)
            if i == 0:
                print_timing_header(args, timing)
            print_timing(timing)
        print_timing_footer(timing)
        print_precision(precision_stats(args))
        print(f"bench_gpu: done in {time.perf_counter() - t0:.0f} s")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
