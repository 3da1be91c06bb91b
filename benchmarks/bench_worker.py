"""Actor-update time of GRPO, SFPO (N=3) and GXPO (active; variants paper_text and authors, and
paper_text with ``optimizer_state=transactional``) through verl's real TrainingWorker, side by side.

One process, the same random model and the same update batch for every rule; each rule's worker
runs ``train_mini_batch`` (what ``update_actor`` runs) ``--repeats`` times, interleaved round-robin
so drift in machine load hits all rules alike. Prints median wall and process-CPU seconds per
update (CPU time is what a shared machine's load disturbs least), the ratios to GRPO,
backward passes per update and the rule's extra memory (its persistent buffers relative to the
trainable parameters; on a GPU also the measured peak-allocation increase). Asserts nothing.

    python benchmarks/bench_worker.py [--hidden 256 --layers 4 --prompts 16 --n 4 --repeats 5]

GXPO's target: <= 3.05x GRPO while active (three passes plus <= 5 % rule overhead).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=4, help="responses per prompt")
    ap.add_argument("--response-length", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from verl_ext.models.tiny import build_tiny_model
    from verl_ext.testing.cpu_worker import _clone_td, build_cpu_actor_worker, compose_trainer_config, make_actor_update_batch
    from verl_ext.workers.training_worker import GXPOTrainingWorker

    path = build_tiny_model(tempfile.mkdtemp(prefix="bench_model_"), hidden_size=args.hidden, num_layers=args.layers,
                            intermediate_size=4 * args.hidden, num_heads=4, num_kv_heads=2)
    rules = {
        "grpo": ["actor_rollout_ref.actor.update_rule=grpo"],
        "sfpo": ["actor_rollout_ref.actor.update_rule=sfpo", "actor_rollout_ref.actor.sfpo.K=3",
                 "actor_rollout_ref.actor.sfpo.shutoff=never"],
        "gxpo": ["actor_rollout_ref.actor.update_rule=gxpo", "actor_rollout_ref.actor.gxpo.shutoff=never"],
        "gxpo-authors": ["actor_rollout_ref.actor.update_rule=gxpo", "actor_rollout_ref.actor.gxpo.variant=authors",
                         "actor_rollout_ref.actor.gxpo.shutoff=never"],
        "gxpo-transactional": ["actor_rollout_ref.actor.update_rule=gxpo", "actor_rollout_ref.actor.gxpo.shutoff=never",
                               "actor_rollout_ref.actor.gxpo.optimizer_state=transactional"],
    }
    actors = {}
    for name, ov in rules.items():
        cfg = compose_trainer_config(path, config_module="recipe.gxpo.config", config_name="gxpo_trainer",
                                     mini_batch_size=args.prompts, micro_batch_size_per_gpu=args.prompts * args.n,
                                     rollout_n=args.n, lr=1e-5, use_remove_padding=False,
                                     overrides=["~experiment", *ov])
        a = build_cpu_actor_worker(config=cfg, worker_cls=GXPOTrainingWorker)
        a.worker.configure_update_rule(a.actor_config.update_rule, a.actor_config.gxpo, a.actor_config.sfpo)
        actors[name] = a
    batch = make_actor_update_batch(actors["grpo"], num_prompts=args.prompts, rollout_n=args.n,
                                    max_response_length=args.response_length)
    n_params = sum(p.numel() for p in actors["grpo"].module.parameters() if p.requires_grad)
    param_bytes = sum(p.numel() * p.element_size() for p in actors["grpo"].module.parameters() if p.requires_grad)

    times = {k: [] for k in actors}
    cpu = {k: [] for k in actors}
    for name, a in actors.items():  # warm-up (twice: Adam state, then GXPO's compiled kernels)
        a.worker.train_mini_batch(_clone_td(batch))
        a.worker.train_mini_batch(_clone_td(batch))
    for _ in range(args.repeats):  # interleaved round-robin: drift in machine load hits every rule alike
        for name, a in actors.items():
            td = _clone_td(batch)
            t, c = time.perf_counter(), time.process_time()
            a.worker.train_mini_batch(td)
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)

    print(f"device=cpu threads={torch.get_num_threads()} trainable params={n_params} "
          f"batch={args.prompts}x{args.n} sequences, response<= {args.response_length} tokens, repeats={args.repeats} "
          f"(interleaved; medians)")
    print(f"{'rule':18} {'s/update':>9} {'x grpo':>7} {'cpu s/update':>13} {'cpu x grpo':>11} {'passes':>7} "
          f"{'cpu x grpo / passes':>20} {'extra bytes / params':>21}")
    base, base_cpu = statistics.median(times["grpo"]), statistics.median(cpu["grpo"])
    for name, a in actors.items():
        med, med_cpu = statistics.median(times[name]), statistics.median(cpu[name])
        rule = a.worker.rule
        passes = rule.backward_passes / rule.n_updates
        extra = rule.buffer_bytes() if hasattr(rule, "buffer_bytes") else (param_bytes if name == "sfpo" else 0)
        if name == "gxpo-transactional":  # plus the optimizer-state snapshot (AdamW: two fp32 moments per parameter)
            extra += 2 * n_params * 4
        print(f"{name:18} {med:>9.3f} {med / base:>7.2f} {med_cpu:>13.3f} {med_cpu / base_cpu:>11.2f} {passes:>7.1f} "
              f"{med_cpu / base_cpu / passes:>20.3f} {extra / param_bytes:>21.2f}")


if __name__ == "__main__":
    main()
