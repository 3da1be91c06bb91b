"""Entry point of the GXPO recipe: ``python -m recipe.gxpo.main_gxpo [overrides]``.

It is verl's own ``main_ppo`` flow -- Hydra config, ``run_ppo`` (Ray init, TaskRunner actor, v1
trainer) -- with three differences, none of which edits verl:

1. the config is ``recipe/gxpo/config/gxpo_trainer.yaml`` (verl's ``ppo_trainer`` + the actor
   ``update_rule`` / ``gxpo`` / ``sfpo`` keys + the project's Hydra groups);
2. the whole config is validated on the driver BEFORE Ray starts: the GXPO actor dataclass (every
   bad ``update_rule``/``gxpo.*``/``sfpo.*`` value stops the run with its key, value and allowed
   range) and then verl's own ``validate_config``;
3. the TaskRunner is :class:`verl_ext.workers.task_runner.GXPOTaskRunner`, which registers the
   ``gxpo_sync`` trainer mode (verl's sync trainer with the GXPO actor worker) in its Ray actor,
   and ``VERL_USE_EXTERNAL_MODULES=verl_ext.plugins`` is added to the Ray runtime env so every
   worker loads the project's verl plugins even when the package is only on a job's working dir.

On a cluster submit it like verl's entry (see ``launch/submit.py``)::

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python -m recipe.gxpo.main_gxpo experiment=paper_math base_model=qwen2.5-1.5b method=gxpo_k5
"""

from __future__ import annotations

import os
import time

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

PLUGIN_MODULES = "verl_ext.plugins"
TRAINER_MODE = "gxpo_sync"


def validate_update_rule(config: DictConfig):
    """The project's own keys (update rule, gxpo/sfpo sections, trainer mode); cheap, checked first."""
    from verl_ext.core.config import ConfigError
    from verl_ext.workers.config import validate_actor_config

    actor_cfg = validate_actor_config(config.actor_rollout_ref.actor)
    from verl_ext.tracking.console import console_mode

    console_mode(config)  # trainer.console
    if not config.trainer.get("use_v1", True):
        raise ConfigError("trainer.use_v1", config.trainer.use_v1, "true (the GXPO worker plugs into verl's v1 trainer)")
    mode = config.trainer.v1.trainer_mode
    if mode != TRAINER_MODE:
        raise ConfigError("trainer.v1.trainer_mode", mode, f"'{TRAINER_MODE}' (verl's sync trainer with the GXPO actor)")
    return actor_cfg


def validate_gxpo_config(config: DictConfig):
    """Driver-side checks, before any Ray worker starts: ours, then verl's own ``validate_config``.
    Raises ``ConfigError`` (a ``ValueError``) naming the key, the value and what is allowed."""
    import verl_ext.plugins  # noqa: F401  (platform plugin, so verl's device checks see this machine)
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    actor_cfg = validate_update_rule(config)
    auto_set_device(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    return actor_cfg


def _export_plugins(config: DictConfig) -> None:
    """Make every Ray worker import the project's verl plugins (verl reads VERL_USE_EXTERNAL_MODULES at import)."""
    with open_dict(config):
        ray_init = config.ray_kwargs.setdefault("ray_init", {})
        runtime_env = ray_init.setdefault("runtime_env", {})
        env_vars = runtime_env.setdefault("env_vars", {})
        current = [m for m in str(env_vars.get("VERL_USE_EXTERNAL_MODULES", "") or "").split(",") if m]
        if PLUGIN_MODULES not in current:
            env_vars["VERL_USE_EXTERNAL_MODULES"] = ",".join([*current, PLUGIN_MODULES])


def _connecting_to_cluster(config: DictConfig) -> bool:
    """True when ray.init will attach to a running cluster (a Ray job's driver, or an explicit address)."""
    address = config.ray_kwargs.get("ray_init", {}).get("address") or os.environ.get("RAY_ADDRESS", "")
    return bool(address) and address != "local"


def _fit_ray_init(config: DictConfig) -> None:
    """Ray refuses num_cpus/num_gpus when attaching to an existing cluster: the cluster's own
    resources apply then (e.g. a CPU head started with ``ray start --head --num-gpus 1``)."""
    if not _connecting_to_cluster(config):
        return
    with open_dict(config):
        ray_init = config.ray_kwargs.get("ray_init", {})
        for key in ("num_cpus", "num_gpus"):
            if ray_init.get(key) is not None:
                print(f"[gxpo] attaching to a running Ray cluster: ignoring ray_kwargs.ray_init.{key}={ray_init[key]}")
                ray_init.pop(key)


def _absolute_outputs(config: DictConfig) -> str:
    """Checkpoint dir and metrics file as absolute driver paths (Ray workers may run elsewhere)."""
    with open_dict(config):
        config.trainer.default_local_dir = os.path.abspath(os.path.expanduser(str(config.trainer.default_local_dir)))
        env_vars = config.ray_kwargs.ray_init.runtime_env.env_vars
        metrics = os.environ.get("VERL_FILE_LOGGER_PATH") or env_vars.get("VERL_FILE_LOGGER_PATH")
        if not metrics:  # one file per launch: verl's file logger truncates its file when it starts
            stamp = time.strftime("%Y%m%d-%H%M%S")
            metrics = os.path.join(config.trainer.default_local_dir, f"metrics-{stamp}.jsonl")
        env_vars["VERL_FILE_LOGGER_PATH"] = metrics
    os.makedirs(os.path.dirname(metrics), exist_ok=True)
    return metrics


def run_gxpo(config: DictConfig) -> None:
    from verl.trainer.main_ppo import run_ppo

    from recipe.gxpo.embedded import prepare_embedded_assets
    from recipe.gxpo.summary import summarize
    from verl_ext.workers.task_runner import GXPOTaskRunner

    validate_update_rule(config)  # fail fast, before building anything
    for path in prepare_embedded_assets(config):
        print(f"[gxpo] built embedded asset: {path}")
    validate_gxpo_config(config)
    _export_plugins(config)
    _fit_ray_init(config)
    metrics_path = _absolute_outputs(config)
    run_ppo(config, task_runner_class=GXPOTaskRunner)
    print(summarize(os.path.dirname(metrics_path), config.trainer.default_local_dir, config.actor_rollout_ref.actor.update_rule))


@hydra.main(config_path="config", config_name="gxpo_trainer", version_base=None)
def main(config: DictConfig) -> None:
    run_gxpo(config)


if __name__ == "__main__":
    main()
