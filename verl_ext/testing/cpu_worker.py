"""Build verl's real actor ``TrainingWorker`` in-process on CPU, and realistic actor-update batches.

This mirrors what verl 0.9.1 does on a GPU cluster, minus Ray:

* the config is verl's own ``ppo_trainer`` composed with Hydra (``pkg://verl.trainer.config``), so
  every default, interpolation and dataclass (``FSDPActorConfig``, ``HFModelConfig``) is verl's;
* :func:`build_actor_training_config` follows ``ActorRolloutRefWorker.init_model`` (engine_workers.py)
  line by line for the actor: ``omega_conf_to_dataclass`` of ``actor_rollout_ref.actor`` /
  ``.model``, the ``TrainingWorkerConfig``, the engine micro-batch settings, and the loss
  ``partial(ppo_loss, config=actor_config)``;
* :func:`build_cpu_actor_worker` then does ``worker_cls(config=...)``, ``reset()``,
  ``set_loss_fn(loss_fn)`` -- exactly the init_model sequence -- in the current process;
* :func:`make_rollout_batch` produces the padded batch a rollout + reward + GRPO advantage step
  produces (``prompts``/``responses``/``input_ids``/``attention_mask``/``position_ids``/
  ``response_mask``/``advantages``...), :func:`compute_log_probs` fills ``old_log_probs`` /
  ``ref_log_prob`` the way ``RayPPOTrainer._compute_old_log_prob`` does (``infer_batch`` on the
  no-padding batch, back to padded), and :func:`make_update_batch` converts to the no-padding
  TensorDict ``RayPPOTrainer._update_actor`` hands to ``update_actor`` (= ``train_mini_batch``).

Not under torchrun, :func:`ensure_dist_env` sets ``RANK=0, WORLD_SIZE=1, LOCAL_RANK=0,
LOCAL_WORLD_SIZE=1, MASTER_ADDR=127.0.0.1`` and a free ``MASTER_PORT`` (verl's ``Worker`` reads
them, and ``TrainingWorker`` initialises the default process group from them). Under torchrun the
launcher's values are kept. The CPU platform (:mod:`verl_ext.platform`) must be active; the
builder calls ``register_cpu_platform()`` itself.

Speed: one update of the default tiny model (8 sequences of <=88 tokens) takes ~0.2 s on one
intra-op thread; on a small machine shared with other processes, two contended OpenMP threads can
make it 10x slower, so benchmarks and tests there should ``torch.set_num_threads(1)`` (torchrun
already sets ``OMP_NUM_THREADS=1``).

Typical use::

    from verl_ext.models.tiny import build_tiny_model
    from verl_ext.testing.cpu_worker import build_cpu_actor_worker, make_actor_update_batch

    actor = build_cpu_actor_worker(build_tiny_model("/tmp/tiny"), mini_batch_size=8)
    td = make_actor_update_batch(actor, num_prompts=4, rollout_n=2)
    out = actor.worker.train_mini_batch(td)       # what update_actor runs
    metrics = out["metrics"]                      # grad_norm, loss, actor/pg_loss, ...
"""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass
from functools import partial
from typing import Any, Sequence

import torch

from verl_ext.core.dist import local

# ---------------------------------------------------------------------------------------------
# Process environment
# ---------------------------------------------------------------------------------------------


def under_torchrun() -> bool:
    """True when launched by torchrun / torch.distributed.elastic (it sets TORCHELASTIC_RUN_ID)."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_dist_env(rank: int = 0, world_size: int = 1, *, master_addr: str = "127.0.0.1", master_port: int | None = None) -> dict[str, str]:
    """Set the env vars verl's ``Worker`` and ``init_process_group`` need, unless torchrun set them.

    Returns the resulting values. When the default process group already exists it is reused
    (``TrainingWorker`` skips initialisation then), so the env only has to be present.
    """
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    if not under_torchrun():
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # the existing default group is what TrainingWorker will use: make the env agree
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
            os.environ["RANK"], os.environ["WORLD_SIZE"] = str(rank), str(world_size)
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("WORLD_SIZE", str(world_size))
        os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
        os.environ.setdefault("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])
        os.environ.setdefault("MASTER_ADDR", master_addr)
        if "MASTER_PORT" not in os.environ:
            os.environ["MASTER_PORT"] = str(master_port or free_port())
    return {k: os.environ[k] for k in keys if k in os.environ}


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------

_PRECISIONS = {"fp32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16"}


def cpu_overrides(
    model_path: str,
    *,
    lora_rank: int = 0,
    lora_alpha: int = 16,
    precision: str = "fp32",
    mini_batch_size: int = 8,
    micro_batch_size_per_gpu: int = 4,
    rollout_n: int = 1,
    lr: float = 1e-5,
    use_remove_padding: bool = True,
    gradient_checkpointing: bool = False,
    ppo_epochs: int = 1,
    clip_grad: float = 1.0,
) -> list[str]:
    """Hydra overrides on verl's ``ppo_trainer`` for an actor update on CPU.

    ``strategy=fsdp2`` (FSDP1 needs ``sync_module_states`` on an accelerator), sdpa attention (no
    flash-attn), no ``torch.compile``; ``precision='fp32'`` makes FSDP2's mixed precision a no-op
    (verl's default is bf16 compute with fp32 masters: pass ``precision='bf16'``; ``'fp16'`` makes
    verl build its fp16 ``ShardedGradScaler``, see :func:`enable_cpu_grad_scaler`). The batch sizes
    are per *prompt* like verl's (``ppo_mini_batch_size`` is multiplied by ``rollout.n``).
    """
    prec = _PRECISIONS[precision]
    return [
        f"actor_rollout_ref.model.path={model_path}",
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        f"actor_rollout_ref.model.use_remove_padding={use_remove_padding}",
        f"actor_rollout_ref.model.enable_gradient_checkpointing={gradient_checkpointing}",
        f"actor_rollout_ref.model.lora_rank={lora_rank}",
        f"actor_rollout_ref.model.lora_alpha={lora_alpha}",
        "actor_rollout_ref.actor.strategy=fsdp2",
        "actor_rollout_ref.actor.use_torch_compile=False",
        "actor_rollout_ref.actor.fsdp_config.use_torch_compile=False",
        f"+actor_rollout_ref.actor.fsdp_config.mixed_precision={{param_dtype:{prec},reduce_dtype:fp32,buffer_dtype:fp32}}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={mini_batch_size}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro_batch_size_per_gpu}",
        f"actor_rollout_ref.actor.ppo_epochs={ppo_epochs}",
        f"actor_rollout_ref.actor.optim.lr={lr}",
        f"actor_rollout_ref.actor.optim.clip_grad={clip_grad}",
        f"actor_rollout_ref.rollout.n={rollout_n}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={micro_batch_size_per_gpu}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={micro_batch_size_per_gpu}",
        "trainer.device=cpu",
        "trainer.n_gpus_per_node=1",
        "trainer.nnodes=1",
    ]


def compose_trainer_config(
    model_path: str | None = None,
    *,
    overrides: Sequence[str] = (),
    config_name: str = "ppo_trainer",
    config_module: str = "verl.trainer.config",
    **cpu_kwargs: Any,
):
    """Compose verl's trainer config (a struct-mode ``DictConfig``) with :func:`cpu_overrides`.

    ``overrides`` (Hydra syntax) are applied after the CPU defaults, so they win. A recipe config
    that inherits ``ppo_trainer`` can be used via ``config_module``/``config_name``. Works whether
    or not Hydra is already initialised in this process (the global state is restored).
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if model_path is None and cpu_kwargs:
        raise ValueError(f"{sorted(cpu_kwargs)} need model_path (they are CPU defaults for cpu_overrides)")
    base = cpu_overrides(model_path, **cpu_kwargs) if model_path is not None else []
    gh = GlobalHydra.instance()
    saved = gh.hydra if gh.is_initialized() else None
    if saved is not None:
        gh.clear()
    try:
        with initialize_config_module(config_module=config_module, version_base=None):
            return compose(config_name=config_name, overrides=[*base, *overrides])
    finally:
        if saved is not None:
            GlobalHydra.instance().initialize(saved)


def make_actor_loss_fn(actor_config):
    """The actor loss exactly as ``ActorRolloutRefWorker.init_model`` builds it (no distillation)."""
    from verl.workers.utils.losses import ppo_loss

    return partial(ppo_loss, config=actor_config)


def build_actor_training_config(config):
    """``(TrainingWorkerConfig, actor_config, model_config)`` for the actor, as ``init_model`` builds them.

    ``config`` is the full trainer config (needs ``actor_rollout_ref.{actor,model,rollout}``).
    """
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.config import TrainingWorkerConfig

    arr = config.actor_rollout_ref
    model_config = omega_conf_to_dataclass(arr.model)
    actor_config = omega_conf_to_dataclass(arr.actor)
    actor_config.model_config = model_config
    profiler = arr.actor.get("profiler", {})
    actor_profiler_config = omega_conf_to_dataclass(profiler) if profiler else None

    training_config = TrainingWorkerConfig(
        model_type=actor_config.model_config.get("model_type", "language_model"),
        model_config=actor_config.model_config,
        engine_config=actor_config.engine,
        optimizer_config=actor_config.optim,
        checkpoint_config=actor_config.checkpoint,
        profiler_config=actor_profiler_config,
    )
    assert arr.actor.use_dynamic_bsz == arr.rollout.log_prob_use_dynamic_bsz
    ec = training_config.engine_config
    ec.use_dynamic_bsz = arr.actor.use_dynamic_bsz
    ec.infer_max_token_len_per_gpu = arr.rollout.log_prob_max_token_len_per_gpu
    ec.infer_micro_batch_size_per_gpu = arr.rollout.log_prob_micro_batch_size_per_gpu
    ec.max_token_len_per_gpu = arr.actor.ppo_max_token_len_per_gpu
    ec.micro_batch_size_per_gpu = arr.actor.ppo_micro_batch_size_per_gpu
    ec.use_remove_padding = model_config.get("use_remove_padding", False)
    return training_config, actor_config, model_config


# ---------------------------------------------------------------------------------------------
# Worker
# ---------------------------------------------------------------------------------------------


def enable_cpu_grad_scaler(engine) -> bool:
    """Give an fp16 engine on CPU a working loss scaler; True when one was put in place.

    verl's FSDP engine builds ``ShardedGradScaler(growth_interval=400)`` whenever
    ``param_dtype=fp16``; that scaler targets CUDA and disables itself without it, so on CPU the
    loss is not scaled. This replaces it by the same scaler for device ``cpu`` (same
    ``growth_interval``, torch's default initial scale 2**16), so verl's own scale -> backward ->
    unscale_ -> step -> update path runs exactly as on a GPU. Engines without an fp16 scaler, or
    with one that is already enabled, are left alone.
    """
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    scaler = getattr(engine, "scaler", None)
    if scaler is None or scaler.is_enabled():
        return False
    engine.scaler = ShardedGradScaler(device="cpu", growth_interval=400)
    return True


@dataclass
class CPUActor:
    """A live actor ``TrainingWorker`` plus the configs it was built from."""

    worker: Any  # TrainingWorker (or the subclass passed as worker_cls)
    config: Any  # the full trainer DictConfig
    actor_config: Any  # FSDPActorConfig (the object the loss closes over)
    model_config: Any  # HFModelConfig
    training_config: Any  # TrainingWorkerConfig
    loss_fn: Any  # partial(ppo_loss, config=actor_config)

    @property
    def tokenizer(self):
        return self.model_config.tokenizer

    @property
    def engine(self):
        return self.worker.engine

    @property
    def module(self):
        return self.worker.engine.module


def build_cpu_actor_worker(
    model_path: str | None = None,
    *,
    config=None,
    worker_cls: type | None = None,
    overrides: Sequence[str] = (),
    **cpu_kwargs: Any,
) -> CPUActor:
    """Build verl's real actor ``TrainingWorker`` (or ``worker_cls``, a subclass) on CPU, in-process.

    Give either ``model_path`` (the config is composed with :func:`compose_trainer_config`;
    ``cpu_kwargs`` go to :func:`cpu_overrides`, e.g. ``lora_rank=8``, ``mini_batch_size=4``,
    ``precision='bf16'``, ``lr=1e-4``) or a ready trainer ``config``. Under torchrun every rank
    calls this; otherwise a world of one is set up (:func:`ensure_dist_env`). An fp16 engine gets a
    working CPU grad scaler (:func:`enable_cpu_grad_scaler`).
    """
    from verl_ext.platform import register_cpu_platform

    if not register_cpu_platform():
        raise RuntimeError(
            "the verl CPU platform is not active (an accelerator is present); set VERL_EXT_FORCE_CPU=1 to force it"
        )
    if worker_cls is None:
        from verl.workers.engine_workers import TrainingWorker as worker_cls  # noqa: N813
    if config is None:
        if model_path is None:
            raise ValueError("give model_path or config")
        config = compose_trainer_config(model_path, overrides=overrides, **cpu_kwargs)
    elif overrides or cpu_kwargs:
        raise ValueError("overrides/cpu_kwargs only apply when the config is composed here (model_path=...)")

    ensure_dist_env()
    training_config, actor_config, model_config = build_actor_training_config(config)
    loss_fn = make_actor_loss_fn(actor_config)
    worker = worker_cls(config=training_config)
    worker.reset()
    enable_cpu_grad_scaler(worker.engine)
    worker.set_loss_fn(loss_fn)
    return CPUActor(
        worker=worker,
        config=config,
        actor_config=actor_config,
        model_config=model_config,
        training_config=training_config,
        loss_fn=loss_fn,
    )


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------


def arithmetic_prompts(num_prompts: int, seed: int = 0) -> list[tuple[str, int]]:
    """``[(question, answer)]`` for 'What is a+b? Answer in \\boxed{}' style prompts."""
    rng = random.Random(seed)
    out = []
    for _ in range(num_prompts):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        op = rng.choice("+-*")
        ans = a + b if op == "+" else a - b if op == "-" else a * b
        out.append((f"What is {a}{op}{b}? Answer in \\boxed{{}}", ans))
    return out


def _left_pad(seqs: list[list[int]], length: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(seqs), length), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        s = s[-length:]
        ids[i, length - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, length - len(s) :] = 1
    return ids, mask


def _right_pad(seqs: list[list[int]], length: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(seqs), length), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        s = s[:length]
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def grpo_advantages(scores: torch.Tensor, response_mask: torch.Tensor, rollout_n: int, eps: float = 1e-6) -> torch.Tensor:
    """Outcome advantages normalised within each group of ``rollout_n`` (verl's GRPO, norm by std)."""
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    token_level = torch.zeros_like(response_mask, dtype=torch.float32)
    lengths = response_mask.sum(-1)
    token_level[torch.arange(len(scores)), (lengths - 1).clamp(min=0)] = scores.float()
    index = [str(i // rollout_n) for i in range(len(scores))]
    import numpy as np

    adv, _ = compute_grpo_outcome_advantage(token_level, response_mask, np.array(index, dtype=object), epsilon=eps)
    return adv


def make_rollout_batch(
    tokenizer,
    *,
    num_prompts: int = 4,
    rollout_n: int = 2,
    max_prompt_length: int = 64,
    max_response_length: int = 24,
    seed: int = 0,
    temperature: float = 1.0,
):
    """The padded batch verl has after rollout + reward + GRPO advantages (as ``DataProto.to_tensordict()``).

    Prompts are arithmetic questions through the tokenizer's chat template (left-padded to
    ``max_prompt_length``); each is repeated ``rollout_n`` times (interleaved, like
    ``DataProto.repeat(interleave=True)``) with a response that is either ``\\boxed{answer}`` or a
    wrong one plus ``eos`` (right-padded to ``max_response_length``; variable lengths). Rewards are
    1/0 for right/wrong and ``advantages`` are GRPO-normalised within each group.
    Keys: prompts, responses, input_ids, attention_mask, position_ids, response_mask,
    token_level_scores, token_level_rewards, advantages, returns; non-tensor ``temperature``.
    """
    from verl.utils import tensordict_utils as tu

    rng = random.Random(seed + 1)
    pad = tokenizer.pad_token_id
    eos = tokenizer.eos_token_id
    prompts_ids, resp_ids, scores = [], [], []
    for question, answer in arithmetic_prompts(num_prompts, seed=seed):
        msgs = [{"role": "user", "content": question}]
        p = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        outcomes = [rng.random() < 0.5 for _ in range(rollout_n)]
        if rollout_n > 1 and len(set(outcomes)) == 1:
            outcomes[-1] = not outcomes[-1]  # keep every group informative (non-zero GRPO advantages)
        for correct in outcomes:
            guess = answer if correct else answer + rng.choice([-3, -2, -1, 1, 2, 3])
            filler = "".join(rng.choice("abcdefghij ") for _ in range(rng.randint(0, 8)))
            text = f"{filler}\\boxed{{{guess}}}"
            r_ids = tokenizer(text, add_special_tokens=False)["input_ids"][: max_response_length - 1] + [eos]
            prompts_ids.append(p_ids)
            resp_ids.append(r_ids)
            scores.append(1.0 if correct else 0.0)

    prompts, prompt_mask = _left_pad(prompts_ids, max_prompt_length, pad)
    responses, response_mask = _right_pad(resp_ids, max_response_length, pad)
    input_ids = torch.cat([prompts, responses], dim=1)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0) * attention_mask
    score = torch.tensor(scores)
    advantages = grpo_advantages(score, response_mask, rollout_n)
    token_level = torch.zeros_like(response_mask, dtype=torch.float32)
    token_level[torch.arange(len(score)), response_mask.sum(-1) - 1] = score
    return tu.get_tensordict(
        tensor_dict={
            "prompts": prompts,
            "responses": responses,
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "response_mask": response_mask,
            "token_level_scores": token_level,
            "token_level_rewards": token_level.clone(),
            "advantages": advantages,
            "returns": advantages.clone(),
        },
        non_tensor_dict={"temperature": temperature},
    )


def _clone_td(td):
    """Deep-enough copy: ``left_right_2_no_padding`` pops/inserts keys in place."""
    return td.clone()


def compute_log_probs(worker, padded_td, *, calculate_entropy: bool = False, no_lora_adapter: bool = False) -> dict[str, torch.Tensor]:
    """Log-probs of the responses under ``worker`` (padded ``(bs, response_len)``), as verl's trainer computes them.

    Mirrors ``RayPPOTrainer._compute_old_log_prob`` (``no_lora_adapter=True`` gives the reference
    log-probs of a LoRA actor, as ``_compute_ref_log_prob`` with ``ref_in_actor``). Returns
    ``{"log_probs": ..., "entropy": ...(if requested)}``. ``padded_td`` is not modified.
    """
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding

    batch_td = left_right_2_no_padding(_clone_td(padded_td))
    meta = {"calculate_entropy": calculate_entropy, "compute_loss": False}
    if no_lora_adapter:
        meta["no_lora_adapter"] = True
    tu.assign_non_tensor(batch_td, **meta)
    output = worker.infer_batch(batch_td)
    out = {"log_probs": no_padding_2_padding(tu.get(output, "log_probs"), batch_td).float()}
    if calculate_entropy:
        out["entropy"] = no_padding_2_padding(tu.get(output, "entropy"), batch_td).float()
    return out


def make_update_batch(
    padded_td,
    config=None,
    *,
    mini_batch_size: int | None = None,
    ppo_epochs: int | None = None,
    seed: int | None = None,
    shuffle: bool | None = None,
    calculate_entropy: bool | None = None,
):
    """The no-padding TensorDict ``RayPPOTrainer._update_actor`` passes to ``update_actor``.

    ``padded_td`` needs old_log_probs (and ref_log_prob when the KL loss is on). Values not given
    come from the trainer ``config`` (``ppo_mini_batch_size * rollout.n`` etc.). ``padded_td`` is
    not modified. Feed the result to ``worker.train_mini_batch``; for a direct
    ``worker.train_batch`` call use :func:`as_train_batch`.
    """
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    actor = config.actor_rollout_ref.actor if config is not None else None
    rollout_n = config.actor_rollout_ref.rollout.n if config is not None else 1

    def pick(value, key, default):
        if value is not None:
            return value
        return actor.get(key, default) if actor is not None else default

    mbs = mini_batch_size if mini_batch_size is not None else (
        actor.ppo_mini_batch_size * rollout_n if actor is not None else padded_td.batch_size[0]
    )
    if calculate_entropy is None:
        calculate_entropy = bool(actor is not None and (actor.get("calculate_entropy", False) or actor.get("entropy_coeff", 0) != 0))
    batch_td = left_right_2_no_padding(_clone_td(padded_td))
    tu.assign_non_tensor(
        batch_td,
        calculate_entropy=calculate_entropy,
        distillation_use_topk=False,
        distillation_only=False,
        global_batch_size=mbs,
        mini_batch_size=mbs,
        epochs=pick(ppo_epochs, "ppo_epochs", 1),
        seed=pick(seed, "data_loader_seed", 42),
        dataloader_kwargs={"shuffle": pick(shuffle, "shuffle", False)},
        compute_loss=True,
    )
    return batch_td


def as_train_batch(update_td, worker=None):
    """Prepare an :func:`make_update_batch` TensorDict for a direct ``worker.train_batch`` call.

    ``train_mini_batch`` pops ``mini_batch_size``/``epochs``/``seed``/``dataloader_kwargs`` and adds
    ``global_token_num`` (all-gathered over the data-parallel group) and
    ``update_lr_scheduler``; this does the same for a batch that is one whole mini-batch.
    """
    from tensordict import NonTensorData

    from verl.utils import tensordict_utils as tu

    td = update_td.clone()
    for key in ("disable_auto_offload", "mini_batch_size", "num_mini_batch", "epochs", "seed", "dataloader_kwargs"):
        tu.pop(td, key=key, default=None)
    global_token_num = td["input_ids"].offsets().diff().tolist()
    if worker is not None and torch.distributed.is_initialized():
        group = worker.engine.get_data_parallel_group()
        gathered = [None] * torch.distributed.get_world_size(group)
        torch.distributed.all_gather_object(gathered, global_token_num, group)
        global_token_num = [x for xs in gathered for x in xs]
    tu.assign_non_tensor(td, global_token_num=NonTensorData(global_token_num), update_lr_scheduler=False, disable_auto_offload=True)
    return td


def shard_for_dp(td, dp_rank: int, dp_size: int):
    """This data-parallel rank's share of a batch, as verl's dispatch would hand it out."""
    from verl.utils import tensordict_utils as tu

    if dp_size == 1:
        return td
    return tu.chunk_tensordict(td, dp_size)[dp_rank]


def make_actor_update_batch(
    actor: CPUActor,
    *,
    num_prompts: int = 4,
    rollout_n: int | None = None,
    seed: int = 0,
    max_prompt_length: int = 64,
    max_response_length: int = 24,
    with_ref: bool = True,
    dp_rank: int | None = None,
    dp_size: int | None = None,
    **update_kwargs: Any,
):
    """Rollout batch -> old (and ref) log-probs from ``actor.worker`` -> update TensorDict for ``train_mini_batch``.

    ``num_prompts * rollout_n`` sequences in total; under data parallelism each rank gets its
    shard (defaults from the actor's data-parallel group), the batch being identical on every
    rank before sharding. ``ref_log_prob`` is the actor's own log-prob (a ref model initialised
    from the same weights) or, with LoRA, the adapter-free log-prob.
    """
    cfg = actor.config
    n = rollout_n if rollout_n is not None else cfg.actor_rollout_ref.rollout.n
    td = make_rollout_batch(
        actor.tokenizer,
        num_prompts=num_prompts,
        rollout_n=n,
        max_prompt_length=max_prompt_length,
        max_response_length=max_response_length,
        seed=seed,
        temperature=cfg.actor_rollout_ref.rollout.temperature,
    )
    if dp_size is None:
        dp_size = actor.engine.get_data_parallel_size()
    if dp_rank is None:
        dp_rank = actor.engine.get_data_parallel_rank()
    td = shard_for_dp(td, dp_rank, dp_size)
    old = compute_log_probs(actor.worker, td)["log_probs"]
    td["old_log_probs"] = old
    if with_ref:
        if actor.model_config.lora_rank > 0:
            td["ref_log_prob"] = compute_log_probs(actor.worker, td, no_lora_adapter=True)["log_probs"]
        else:
            td["ref_log_prob"] = old.clone()
    if "mini_batch_size" not in update_kwargs:
        # per-dp-rank share of the mini-batch is handled by train_mini_batch (mini_batch_size // dp)
        update_kwargs["mini_batch_size"] = cfg.actor_rollout_ref.actor.ppo_mini_batch_size * n
    return make_update_batch(td, cfg, **update_kwargs)


def parameter_snapshot(module: torch.nn.Module, only_trainable: bool = True) -> dict[str, torch.Tensor]:
    """Local (this rank's shard) copies of the parameters; works for FSDP2 DTensors."""
    out = {}
    for name, p in module.named_parameters():
        if only_trainable and not p.requires_grad:
            continue
        out[name] = local(p.detach()).clone().float()
    return out


def max_abs_change(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    return max(float((after[k] - before[k]).abs().max()) if before[k].numel() else 0.0 for k in before)


__all__ = [
    "CPUActor",
    "arithmetic_prompts",
    "as_train_batch",
    "build_actor_training_config",
    "build_cpu_actor_worker",
    "compose_trainer_config",
    "compute_log_probs",
    "cpu_overrides",
    "enable_cpu_grad_scaler",
    "ensure_dist_env",
    "free_port",
    "grpo_advantages",
    "make_actor_loss_fn",
    "make_actor_update_batch",
    "make_rollout_batch",
    "make_update_batch",
    "max_abs_change",
    "parameter_snapshot",
    "shard_for_dp",
    "under_torchrun",
]
