"""torchrun --nproc_per_node=2: the GXPO TrainingWorker on FSDP2/gloo; rank 0 alone is told to trip at any rise."""

import os

import torch
import torch.distributed as dist

torch.set_num_threads(1)

from verl_ext.testing.cpu_worker import build_cpu_actor_worker, compose_trainer_config, make_actor_update_batch
from verl_ext.workers.training_worker import GXPOTrainingWorker

rank = int(os.environ["RANK"])
threshold = "1e-6" if rank == 0 else "1e9"
cfg = compose_trainer_config(
    os.environ["TINY_MODEL"], config_module="recipe.gxpo.config", config_name="gxpo_trainer", mini_batch_size=4, lr=1e-3,
    overrides=[
        "~experiment",  # the recipe config alone: this script sets the CPU worker knobs itself
        "actor_rollout_ref.actor.update_rule=gxpo", "actor_rollout_ref.actor.gxpo.warmup=2",
        "actor_rollout_ref.actor.gxpo.window=4", f"actor_rollout_ref.actor.gxpo.z_threshold={threshold}",
    ],
)
actor = build_cpu_actor_worker(config=cfg, worker_cls=GXPOTrainingWorker)
ac = actor.actor_config
actor.worker.configure_update_rule(ac.update_rule, ac.gxpo, ac.sfpo)
active = []
for i in range(5):
    td = make_actor_update_batch(actor, num_prompts=4, rollout_n=2, seed=100 + i)
    actor.worker.train_mini_batch(td)
    active.append(float(actor.worker.rule.gate.active) if i >= 0 else None)
    # the worker's own record for this update (1 mini-batch per call)
state = actor.worker.rule.state_dict()
torch.save({"active": active, "gate": state["gate"], "passes": state["backward_passes"]}, os.path.join(os.environ["OUT_DIR"], f"rank{rank}.pt"))
dist.barrier()
