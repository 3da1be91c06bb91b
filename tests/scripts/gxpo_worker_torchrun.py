"""torchrun --nproc_per_node=N: the GXPO TrainingWorker on FSDP2/gloo, one actor per gate option.

Rank 0 alone is told to trip (a tiny ``z_threshold``; every other rank gets 1e9), or, for the
``fallback`` option, alone sees probe 1 as failed (``min_probe_norm=1e9``): with the decision
broadcast over the whole actor group every rank must follow rank 0. Each rank saves, per option,
the active flag after every call, the gate state and the rule counters to ``$OUT_DIR/rank{r}.pt``.

Env: ``TINY_MODEL``, ``OUT_DIR``; ``GATE_OPTIONS`` (comma list of names below, default all);
``FSDP_SIZE`` (default -1: one shard group over all ranks; 2 with 4 ranks = HSDP 2 x 2); ``CALLS``;
``MICRO`` (micro-batch size per rank, default 4; a mini-batch is 8 sequences over all ranks).
"""

import os

import torch
import torch.distributed as dist

torch.set_num_threads(1)

from verl_ext.testing.cpu_worker import build_cpu_actor_worker, compose_trainer_config, make_actor_update_batch
from verl_ext.workers.training_worker import GXPOTrainingWorker

rank = int(os.environ["RANK"])
tiny = "1e-6" if rank == 0 else "1e9"
# name -> (gxpo knobs, prompts per call: 4 = one mini-batch, 8 = two)
OPTIONS = {
    "default": ({"z_threshold": tiny}, 4),
    "two_sided": ({"z_threshold": tiny, "two_sided": True}, 4),
    "ema": ({"z_threshold": tiny, "two_sided": True, "gate_stat": "ema"}, 4),
    "patience": ({"z_threshold": tiny, "two_sided": True, "patience": 2}, 4),
    "corrective_norm_clipped": ({"z_threshold": tiny, "two_sided": True, "gate_signal": "corrective_norm_clipped"}, 4),
    "probe_norm": ({"z_threshold": tiny, "two_sided": True, "gate_signal": "probe_norm"}, 4),
    "entropy": ({"z_threshold": tiny, "two_sided": True, "gate_signal": "entropy"}, 4),
    "cosine": ({"z_threshold": tiny, "two_sided": True, "gate_signal": "cosine"}, 4),
    "step": ({"z_threshold": tiny, "two_sided": True, "gate_granularity": "step"}, 8),
    "authors": ({"variant": "authors", "z_threshold": tiny, "two_sided": True}, 4),
    "fallback": ({"on_failure": "standard_step", "min_probe_norm": "1e9" if rank == 0 else "0.0", "shutoff": "never"}, 4),
}
names = [n for n in os.environ.get("GATE_OPTIONS", ",".join(OPTIONS)).split(",") if n]
calls = int(os.environ.get("CALLS", "5"))
fsdp_size = int(os.environ.get("FSDP_SIZE", "-1"))
micro = int(os.environ.get("MICRO", "4"))
results = {}
for name in names:
    knobs, prompts = OPTIONS[name]
    knobs = {"warmup": 2, "window": 4, **knobs}
    cfg = compose_trainer_config(
        os.environ["TINY_MODEL"], config_module="recipe.gxpo.config", config_name="gxpo_trainer", mini_batch_size=4, lr=1e-3,
        micro_batch_size_per_gpu=micro, overrides=[
            "~experiment",  # the recipe config alone: this script sets the CPU worker knobs itself
            "actor_rollout_ref.actor.update_rule=gxpo", f"actor_rollout_ref.actor.fsdp_config.fsdp_size={fsdp_size}",
            *[f"actor_rollout_ref.actor.gxpo.{k}={v}" for k, v in knobs.items()],
        ],
    )
    actor = build_cpu_actor_worker(config=cfg, worker_cls=GXPOTrainingWorker)
    ac = actor.actor_config
    actor.worker.configure_update_rule(ac.update_rule, ac.gxpo, ac.sfpo)
    active, norms = [], []
    for i in range(calls):
        td = make_actor_update_batch(actor, num_prompts=prompts, rollout_n=2, seed=100 + i)
        out = actor.worker.train_mini_batch(td)
        active.append(float(actor.worker.rule.gate.active))
        norms.append([float(x) for x in out["metrics"].get("gxpo/probe_grad_norm_0", [])])
    state = actor.worker.rule.state_dict()
    results[name] = {"active": active, "gate": state["gate"], "passes": state["backward_passes"],
                     "fallback_steps": state.get("fallback_steps", 0), "probe_norms": norms,
                     "groups": [dist.get_world_size(g) if g is not None else 1 for g in actor.worker._process_groups()]}
    del actor
torch.save(results, os.path.join(os.environ["OUT_DIR"], f"rank{rank}.pt"))
dist.barrier()
