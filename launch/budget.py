"""What a run costs before it is submitted: generations, GPU-hours and disk, from the presets.

    python -m launch.budget                                   # the Table 1 grid (experiment=paper_math)
    python -m launch.budget --experiment paper_math_cheap_val # the cheaper validation schedule
    python -m launch.budget --models qwen2.5-1.5b --methods grpo,gxpo_k5 -- trainer.total_training_steps=500

Each (model, method) is composed with Hydra exactly as the job will be (``launch.precheck``), so the
counts follow the presets: training generations = steps x ``data.train_batch_size`` x
``rollout.n``; validation generations = evaluations (step 0 when ``val_before_train``, then every
``test_freq`` steps and the last step) x ``val_kwargs.n`` x the evaluation sets' sizes
(:data:`EVAL_SET_SIZES`, the row counts ``verl_ext.data.prepare_math`` writes); backward passes =
updates x :func:`launch.runmeta.backward_passes_per_update` (GRPO 1, SFPO K+1, GXPO 3 while
active: an upper bound, the adaptive shutoff lowers it to 1).

Disk: a verl FSDP checkpoint holds the actor's parameters in ``fsdp_config.model_dtype`` (fp32 in
the paper presets) and AdamW's two moments (fp32) for the trained parameters (all of them, or the
LoRA adapters), so 12 bytes per trained parameter (+4 per frozen one under LoRA); the run keeps
``trainer.max_actor_ckpt_to_keep`` of them (verl deletes the oldest before saving a new one).
The parameter counts come from the models' published architectures (:data:`ARCHITECTURES`).

GPU-hours are ESTIMATES from stated throughput assumptions (:class:`Assumptions`; every one is a
flag): generation time = generated tokens / (tokens per second per GPU); training time = FLOPs /
(GPU peak x MFU), with 6 x params x tokens FLOPs per backward pass (4x under LoRA: no weight gradient
for the frozen base) and 2 x params x tokens for each of the old-policy and reference forward passes.
Measure your own throughput on a few steps and pass it in to tighten them.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Iterable, Sequence

from launch.runmeta import backward_passes_per_update

#: Rows of each evaluation set as ``verl_ext.data.prepare_math`` writes them (MATH-500, AMC 2023,
#: GSM8K test, Minerva Math, OlympiadBench OE_TO_maths_en_COMP).
EVAL_SET_SIZES = {"math500": 500, "amc23": 40, "gsm8k": 1319, "minerva": 272, "olympiadbench": 675}


@dataclasses.dataclass(frozen=True)
class Arch:
    """A decoder's shape (its Hugging Face config.json)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    qkv_bias: bool

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear of one layer, by peft module name."""
        kv = self.kv_heads * self.head_dim
        return {"q_proj": (self.hidden, self.hidden), "k_proj": (self.hidden, kv), "v_proj": (self.hidden, kv),
                "o_proj": (self.hidden, self.hidden), "gate_proj": (self.hidden, self.intermediate),
                "up_proj": (self.hidden, self.intermediate), "down_proj": (self.intermediate, self.hidden)}

    def params(self) -> int:
        per_layer = sum(i * o for i, o in self.linear_shapes().values()) + 2 * self.hidden  # + 2 RMSNorms
        if self.qkv_bias:
            per_layer += self.hidden + 2 * self.kv_heads * self.head_dim
        embed = self.vocab * self.hidden
        return self.layers * per_layer + embed * (1 if self.tied else 2) + self.hidden

    def lora_params(self, rank: int, targets: Iterable[str]) -> int:
        shapes = self.linear_shapes()
        return self.layers * sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets)


#: Published architectures of the presets' models (``actor_rollout_ref.model.path``).
ARCHITECTURES = {
    "Qwen/Qwen2.5-1.5B-Instruct": Arch(1536, 8960, 28, 12, 2, 151936, tied=True, qkv_bias=True),
    "Qwen/Qwen2.5-3B-Instruct": Arch(2048, 11008, 36, 16, 2, 151936, tied=True, qkv_bias=True),
    "Qwen/Qwen2.5-7B-Instruct": Arch(3584, 18944, 28, 28, 4, 152064, tied=False, qkv_bias=True),
    "meta-llama/Llama-3.2-3B-Instruct": Arch(3072, 8192, 28, 24, 8, 128256, tied=True, qkv_bias=False),
}


@dataclasses.dataclass(frozen=True)
class Assumptions:
    """Throughput assumptions behind the GPU-hours (estimates; H100 80GB, bf16)."""

    #: mean generated tokens per response (training and validation); the presets cap it at
    #: data.max_response_length
    response_tokens: int = 600
    #: mean prompt tokens
    prompt_tokens: int = 200
    #: vLLM generation throughput per GPU, in tokens/s for a 1B-parameter model; a model of P billion
    #: parameters is taken to generate gen_tokens_per_s_1b / P tokens/s per GPU
    gen_tokens_per_s_1b: float = 40000.0
    #: dense bf16 peak per GPU (H100 SXM) and the fraction of it training reaches
    peak_flops: float = 989e12
    mfu: float = 0.35


@dataclasses.dataclass(frozen=True)
class Budget:
    model: str
    method: str
    gpus: int
    steps: int
    train_generations: int
    evaluations: int
    val_generations: int
    backward_passes_max: int
    params: int
    trained_params: int
    checkpoint_bytes: int
    checkpoints_kept: int
    checkpoints_written: int
    gen_gpu_hours_train: float
    gen_gpu_hours_val: float
    train_gpu_hours: float

    @property
    def gpu_hours(self) -> float:
        return self.gen_gpu_hours_train + self.gen_gpu_hours_val + self.train_gpu_hours

    @property
    def disk_bytes(self) -> int:
        return self.checkpoint_bytes * self.checkpoints_kept


def _eval_steps(steps: int, test_freq: int, before: bool) -> int:
    """verl's fit loop: step 0 when val_before_train, every test_freq steps, and the last step."""
    if test_freq is None or test_freq <= 0:
        return int(before)
    at = {s for s in range(1, steps + 1) if s % test_freq == 0} | {steps}
    return len(at) + int(before)


def _val_set_name(path: str) -> str:
    name = str(path).rsplit("/", 1)[-1]
    return name[: -len(".parquet")] if name.endswith(".parquet") else name


def _bytes_per(dtype: str) -> int:
    return 2 if str(dtype) in ("bf16", "bfloat16", "fp16", "float16") else 4


def budget_of(cfg: Any, model: str, method: str, a: Assumptions = Assumptions()) -> Budget:
    """The budget of one composed recipe config (``trainer``, ``data``, ``actor_rollout_ref``)."""
    t, d, arr = cfg.trainer, cfg.data, cfg.actor_rollout_ref
    actor, rollout = arr.actor, arr.rollout
    steps = int(t.total_training_steps)
    gpus = int(t.n_gpus_per_node) * int(t.nnodes)
    train_gens = steps * int(d.train_batch_size) * int(rollout.n)
    val_files = d.val_files if not isinstance(d.val_files, str) else [d.val_files]
    sizes = []
    for f in val_files:
        name = _val_set_name(f)
        if name not in EVAL_SET_SIZES:
            raise ValueError(f"data.val_files: no known size for {f!r} (known: {', '.join(EVAL_SET_SIZES)})")
        sizes.append(EVAL_SET_SIZES[name])
    n_eval = _eval_steps(steps, int(t.test_freq), bool(t.val_before_train))
    val_gens = n_eval * int(rollout.val_kwargs.n) * sum(sizes)
    rule = str(actor.get("update_rule", "grpo"))
    k = int(actor[rule].K) if rule in ("gxpo", "sfpo") else None
    per_update = backward_passes_per_update(rule, k)
    if per_update is None:
        raise ValueError(f"actor_rollout_ref.actor.update_rule={rule!r}: no backward-pass count (known: grpo, sfpo, gxpo)")
    mini_batches = max(1, int(d.train_batch_size) // int(actor.ppo_mini_batch_size)) * int(actor.get("ppo_epochs", 1))
    bps = steps * mini_batches * per_update

    path = str(arr.model.path)
    if path not in ARCHITECTURES:
        raise ValueError(f"actor_rollout_ref.model.path={path!r}: no architecture known (known: {', '.join(ARCHITECTURES)})")
    arch = ARCHITECTURES[path]
    params = arch.params()
    rank = int(arr.model.get("lora_rank", 0) or 0)
    if rank > 0:
        targets = list(arr.model.target_modules) if not isinstance(arr.model.target_modules, str) else (
            list(arch.linear_shapes()) if arr.model.target_modules == "all-linear" else [arr.model.target_modules])
        trained = arch.lora_params(rank, targets)
    else:
        trained = params
    wbytes = _bytes_per(actor.fsdp_config.get("model_dtype", "fp32"))
    ckpt = params * wbytes + trained * (wbytes * int(rank > 0) + 8)  # weights (+ adapters) + AdamW moments
    save_freq = int(t.save_freq)
    written = steps // save_freq if save_freq > 0 else 0
    keep = t.get("max_actor_ckpt_to_keep")
    kept = written if keep in (None, 0) else min(int(keep), written)

    pb = params / 1e9
    tps = a.gen_tokens_per_s_1b / pb
    gen_train = train_gens * a.response_tokens / tps / 3600
    gen_val = val_gens * a.response_tokens / tps / 3600
    tokens_step = int(d.train_batch_size) * int(rollout.n) * (a.prompt_tokens + a.response_tokens)
    per_bp = (4 if rank > 0 else 6) * params * tokens_step
    forwards = 2 * (2 * params * tokens_step)  # old-policy and reference log-probs
    train_h = steps * forwards / (a.peak_flops * a.mfu) / 3600 + bps * per_bp / (a.peak_flops * a.mfu) / 3600
    return Budget(model, method, gpus, steps, train_gens, n_eval, val_gens, bps, params, trained, ckpt, kept, written,
                  gen_train, gen_val, train_h)


def compute(models: Sequence[str], methods: Sequence[str], experiment: str, overrides: Sequence[str] = (),
            a: Assumptions = Assumptions()) -> list[Budget]:
    from launch.precheck import recipe_composer

    out = []
    with recipe_composer() as compose:
        for model in models:
            for method in methods:
                cfg = compose([f"experiment={experiment}", f"base_model={model}", f"method={method}", *overrides])
                out.append(budget_of(cfg, model, method, a))
    return out


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f}"


def markdown(rows: Sequence[Budget], a: Assumptions) -> str:
    head = ("| model | method | GPUs | train gens | evals | val gens | BPs (max) | GPU-h gen train | GPU-h gen val "
            "| GPU-h train | **GPU-h total** | wall h | ckpt GB | kept | **disk GB** |")
    lines = [head, "|" + "---|" * 15]
    for b in rows:
        lines.append(f"| {b.model} | {b.method} | {b.gpus} | {b.train_generations:,} | {b.evaluations} | "
                     f"{b.val_generations:,} | {b.backward_passes_max} | {b.gen_gpu_hours_train:.0f} | "
                     f"{b.gen_gpu_hours_val:.0f} | {b.train_gpu_hours:.0f} | **{b.gpu_hours:.0f}** | {b.gpu_hours / b.gpus:.0f} | "
                     f"{_gb(b.checkpoint_bytes)} | {b.checkpoints_kept} | **{_gb(b.disk_bytes)}** |")
    total_h = sum(b.gpu_hours for b in rows)
    total_d = sum(b.disk_bytes for b in rows)
    lines.append(f"| **all {len(rows)} runs** | | | {sum(b.train_generations for b in rows):,} | | "
                 f"{sum(b.val_generations for b in rows):,} | | | | | **{total_h:,.0f}** | | | | **{_gb(total_d)}** |")
    lines.append("")
    lines.append(f"Estimates, assuming {a.response_tokens} generated and {a.prompt_tokens} prompt tokens per sample, "
                 f"{a.gen_tokens_per_s_1b:,.0f}/P generated tokens/s per GPU for a P-billion-parameter model, and "
                 f"training at {a.mfu:.0%} of {a.peak_flops / 1e12:,.0f} TFLOP/s per GPU. "
                 "Backward passes per update: GRPO 1, SFPO K+1, GXPO 3 (upper bounds for SFPO/GXPO: after the shutoff, 1). "
                 "Disk: the kept checkpoints (weights + AdamW moments); add the model download (~2 bytes/param).")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from launch.table1_grid import EXPERIMENT, MODELS, PAPER_ROWS

    argv = list(sys.argv[1:] if argv is None else argv)
    overrides: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, overrides = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(prog="python -m launch.budget", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", default=EXPERIMENT, help=f"conf/experiment option (default {EXPERIMENT})")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated base_model options (default: Table 1's)")
    p.add_argument("--methods", default=None, help="comma-separated method options (default: the rows the paper prints)")
    for f in dataclasses.fields(Assumptions):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                       help=f"assumption (default {f.default})")
    args = p.parse_args(argv)
    a = Assumptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Assumptions)})
    models = [m for m in args.models.split(",") if m]
    rows: list[Budget] = []
    for model in models:
        methods = args.methods.split(",") if args.methods else PAPER_ROWS.get(model, [])
        rows += compute([model], methods, args.experiment, overrides, a)
    print(markdown(rows, a))
    return 0


if __name__ == "__main__":
    sys.exit(main())
