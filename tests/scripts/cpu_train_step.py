"""One real verl actor update (TrainingWorker.train_mini_batch) on CPU; run under torchrun.

    torchrun --standalone --nproc_per_node=2 tests/scripts/cpu_train_step.py MODEL_DIR OUT_DIR

Each rank writes OUT_DIR/rank{R}.json with the update's metrics, the largest change of its local
parameter shard and a checksum of the full (all-gathered) parameters after the update.
"""

import json
import os
import sys
import time

import torch


def main() -> None:
    model_dir, out_dir = sys.argv[1], sys.argv[2]
    t0 = time.time()
    import verl  # noqa: F401  (loads the verl_ext plugin through the verl.plugins entry point)
    from verl.utils.device import get_device_name

    from verl_ext.testing.cpu_worker import (
        build_cpu_actor_worker,
        make_actor_update_batch,
        max_abs_change,
        parameter_snapshot,
    )

    actor = build_cpu_actor_worker(model_dir, mini_batch_size=4, micro_batch_size_per_gpu=2, rollout_n=2, lr=1e-3)
    td = make_actor_update_batch(actor, num_prompts=4, rollout_n=2, seed=0)
    before = parameter_snapshot(actor.module)
    out = actor.worker.train_mini_batch(td)
    metrics = out["metrics"]
    change = max_abs_change(before, parameter_snapshot(actor.module))
    checksum = 0.0
    for p in actor.module.parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        checksum += float(full.detach().double().abs().sum())
    rank = torch.distributed.get_rank()
    result = {
        "rank": rank,
        "world_size": torch.distributed.get_world_size(),
        "device": get_device_name(),
        "backend": torch.distributed.get_backend(),
        "local_batch": int(td.batch_size[0]),
        "loss": [float(x) for x in metrics["loss"]],
        "grad_norm": [float(x) for x in metrics["grad_norm"]],
        "max_param_change": change,
        "param_checksum": checksum,
        "seconds": time.time() - t0,
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
