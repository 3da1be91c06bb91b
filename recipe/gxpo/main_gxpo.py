"""Entry point of the GXPO recipe: ``python -m recipe.gxpo.main_gxpo [overrides]``.

It is verl's own ``main_ppo`` flow -- Hydra config, ``run_ppo`` (Ray init, TaskRunner actor, v1
trainer) -- with these differences, none of which edits verl:

1. the config is ``recipe/gxpo/config/gxpo_trainer.yaml`` (verl's ``ppo_trainer`` + the actor
   ``update_rule`` / ``gxpo`` / ``sfpo`` keys + the project's Hydra groups);
2. the whole config is validated on the driver BEFORE anything is built or Ray starts: the
   project's keys (update rule, ``gxpo.*``/``sfpo.*`` ranges, the trainer mode, an actor strategy
   of ``fsdp``/``fsdp2``, no ``base_model=`` preset on the embedded CPU experiment), then verl's own
   ``validate_config``;
3. the run's outputs live in one directory, ``trainer.default_local_dir`` (absolute): checkpoints,
   the metrics JSONL (the ``file`` logger is always on) and wandb (offline unless ``WANDB_MODE`` is
   set); a Ray job whose outputs would land in its working-dir copy warns loudly
   (:func:`prepare_outputs`); a run that already finished is reported, not silently redone
   (:func:`finished_run_note`);
4. each job of a Hydra multirun (``-m``) gets its own run named from its swept values, and Ray is
   shut down after each job (verl's ``run_ppo`` only calls ``ray.init`` when Ray is not running and
   never shuts it down, so the next job would find the first job's resources still held);
5. the TaskRunner is :class:`verl_ext.workers.task_runner.GXPOTaskRunner`, which registers the
   ``gxpo_sync`` trainer mode (verl's sync trainer with the GXPO actor worker) in its Ray actor,
   and ``VERL_USE_EXTERNAL_MODULES=verl_ext.plugins`` is added to the Ray runtime env so every
   worker loads the project's verl plugins even when the package is only on a job's working dir.
   Inside a Ray job the env vars the job already sets are not repeated (Ray refuses to merge
   runtime envs that both set a variable);
6. before Ray starts, the checkpoint to resume from is checked file by file and the newest whole one
   is used (:mod:`recipe.gxpo.resume`); SIGTERM saves the step in progress and exits with status 75,
   and a run that stops early ends with the line that resumes it (:mod:`recipe.gxpo.preemption`).

On a cluster submit it with ``launch/submit.py`` (which gives the run a directory on shared
storage), or like verl's entry with an explicit checkpoint directory::

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python -m recipe.gxpo.main_gxpo experiment=paper_math base_model=qwen2.5-1.5b method=gxpo_k5 \
        trainer.default_local_dir=/shared/runs/qwen_gxpo_k5
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from recipe.gxpo import run_layout

PLUGIN_MODULES = "verl_ext.plugins"
# verl's strategies the GXPO worker supports (it drives verl's FSDP engine)
STRATEGIES = ("fsdp", "fsdp2")
EMBEDDED_EXPERIMENT = "cpu_arithmetic"


def _trainer_mode() -> str:
    from verl_ext.workers.trainer import TRAINER_MODE

    return TRAINER_MODE


def validate_update_rule(config: DictConfig):
    """The project's own keys (update rule, gxpo/sfpo sections, trainer mode, strategy, presets);
    cheap, checked first -- before the embedded assets are built and before Ray starts."""
    from verl_ext.core.config import ConfigError
    from verl_ext.workers.config import validate_actor_config

    _refuse_model_preset_on_embedded_task(config)
    strategy = config.actor_rollout_ref.actor.get("strategy")
    if strategy not in STRATEGIES:
        raise ConfigError("actor_rollout_ref.actor.strategy", strategy,
                          " | ".join(STRATEGIES) + " (the GXPO actor worker drives verl's FSDP engine)")
    actor_cfg = validate_actor_config(config.actor_rollout_ref.actor)
    from verl_ext.tracking.console import console_mode

    console_mode(config)  # trainer.console
    from verl_ext.workers.next_hook import check_next_config
    from verl_ext.metrics.pass_at_k import parse_pass_at_k_setting

    check_next_config(config)  # NExt needs LoRA adapters
    parse_pass_at_k_setting(config.trainer.get("val_pass_at_k"))  # trainer.val_pass_at_k
    from recipe.gxpo.preemption import grace_seconds

    grace_seconds(config)  # trainer.preempt_grace_s
    if not config.trainer.get("use_v1", True):
        raise ConfigError("trainer.use_v1", config.trainer.use_v1, "true (the GXPO worker plugs into verl's v1 trainer)")
    mode = config.trainer.v1.trainer_mode
    if mode != _trainer_mode():
        raise ConfigError("trainer.v1.trainer_mode", mode, f"'{_trainer_mode()}' (verl's sync trainer with the GXPO actor)")
    if config.trainer.get("val_only") and not config.trainer.get("val_before_train", True):  # verl would train
        raise ConfigError("trainer.val_before_train", False, "true with trainer.val_only=true (verl evaluates in its step-0 pass only)")
    return actor_cfg


def _refuse_model_preset_on_embedded_task(config: DictConfig) -> None:
    """``base_model=...`` without ``experiment=...`` keeps the embedded CPU task selected, which
    overrides the model path, the rollout and the GPU count: refuse instead of training the tiny model."""
    from verl_ext.core.config import ConfigError

    if config.get("gxpo_embedded") is None:  # only the embedded experiments have this section
        return
    model = OmegaConf.select(config, "gxpo_run.model", default=None)  # set by every conf/base_model option
    if model:
        embedded = _hydra_choice("experiment") or EMBEDDED_EXPERIMENT
        raise ConfigError("base_model", model, f"only with a GPU experiment: add experiment=paper_math (or "
                          f"experiment=paper_math_debug); the default experiment={embedded} is the embedded CPU "
                          f"task, which trains its own tiny model on CPU and would override base_model={model}")


def _hydra_choice(group: str) -> str | None:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices.get(group) if HydraConfig.initialized() else None


def validate_gxpo_config(config: DictConfig):
    """Driver-side checks, before any Ray worker starts: ours, then verl's own ``validate_config``.
    Raises ``ConfigError`` (a ``ValueError``) naming the key, the value and what is allowed."""
    actor_cfg = validate_update_rule(config)
    validate_verl_config(config)
    return actor_cfg


def validate_verl_config(config: DictConfig) -> None:
    """verl's own ``validate_config`` (the entry point runs it after :func:`validate_update_rule` and
    after building the embedded assets)."""
    import verl_ext.plugins  # noqa: F401  (platform plugin, so verl's device checks see this machine)
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    from verl_ext.workers.config import gxpo_entry

    auto_set_device(config)
    with gxpo_entry():  # the GXPO actor config refuses non-GRPO rules outside this entry point
        validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))


# ------------------------------------------------------------------------------------ worker env
def _worker_env(config: DictConfig) -> DictConfig:
    """The ``ray.init`` runtime env's ``env_vars`` node (created when missing)."""
    with open_dict(config):
        node = config.ray_kwargs
        for key in ("ray_init", "runtime_env", "env_vars"):
            if node.get(key) is None:
                node[key] = {}
            node = node[key]  # the DictConfig node (setdefault would return the plain default)
        return node


def _export_plugins(config: DictConfig) -> None:
    """Make every Ray worker import the project's verl plugins (verl reads VERL_USE_EXTERNAL_MODULES at import)."""
    env_vars = _worker_env(config)
    inherited = env_vars.get("VERL_USE_EXTERNAL_MODULES") or os.environ.get("VERL_USE_EXTERNAL_MODULES", "")
    current = [m for m in str(inherited or "").split(",") if m]
    if PLUGIN_MODULES not in current:
        with open_dict(env_vars):
            env_vars["VERL_USE_EXTERNAL_MODULES"] = ",".join([*current, PLUGIN_MODULES])


def _fit_runtime_env_to_job(config: DictConfig) -> None:
    """Inside a Ray job, Ray merges the job's runtime env with ``ray.init``'s and refuses any
    environment variable both set (``Failed to merge the Job's runtime env``). Variables the job
    already sets to the same value are dropped from ``ray.init``'s; for the rest (and the few that
    verl's ``run_ppo`` always forwards) the driver's value wins (``RAY_OVERRIDE_JOB_RUNTIME_ENV=1``,
    unless set by the user): it was computed from the job's own environment."""
    if not os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        return
    env_vars = _worker_env(config)
    with open_dict(env_vars):
        for key in [k for k in env_vars if os.environ.get(k) == str(env_vars[k])]:
            env_vars.pop(key)
    os.environ.setdefault("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")


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


# ------------------------------------------------------------------------------------ run outputs
def name_multirun_job(config: DictConfig, swept: list[tuple[str, str]]) -> str | None:
    """One job of a Hydra multirun: ``trainer.experiment_name`` gets the job's swept values
    (``arithmetic_gxpo_k3``), and so does its checkpoint directory, so that no two jobs of a sweep
    share a run directory (with ``resume_mode=auto`` a later job would resume an earlier one's
    checkpoint). Returns the suffix, or None when nothing is swept."""
    suffix = run_layout.job_suffix(swept)
    if not suffix:
        return None
    with open_dict(config):
        before = str(OmegaConf.select(config, "trainer.default_local_dir"))
        config.trainer.experiment_name = f"{config.trainer.experiment_name}_{suffix}"
        if str(OmegaConf.select(config, "trainer.default_local_dir")) == before:  # a fixed path: one level per job
            config.trainer.default_local_dir = os.path.join(before, suffix)
    return suffix


def prepare_outputs(config: DictConfig) -> str:
    """Every run, however started, keeps checkpoints, metrics and wandb files in one directory,
    ``trainer.default_local_dir`` (made absolute on the driver; Ray workers may run elsewhere):

    * the ``file`` logger is always on, writing a new ``<dir>/metrics-<stamp>-<pid>.jsonl`` (what
      ``launch.report`` and the summary read), unless ``VERL_FILE_LOGGER_PATH`` names a file, which
      must not hold metrics already (verl's file logger would truncate it);
    * wandb writes under ``<dir>/wandb`` (``WANDB_DIR``) and is offline unless ``WANDB_MODE`` is set;
    * inside a Ray job whose working_dir copy would hold these outputs, a loud warning.

    Returns the metrics file."""
    env_vars = _worker_env(config)
    with open_dict(config), open_dict(env_vars):
        run_dir = os.path.abspath(os.path.expanduser(str(config.trainer.default_local_dir)))
        config.trainer.default_local_dir = run_dir
        loggers = config.trainer.get("logger") or []
        loggers = [loggers] if isinstance(loggers, str) else list(loggers)
        if "file" not in loggers:
            config.trainer.logger = [*loggers, "file"]
        metrics = os.environ.get("VERL_FILE_LOGGER_PATH") or env_vars.get("VERL_FILE_LOGGER_PATH")
        if metrics and os.path.isfile(metrics) and os.path.getsize(metrics) > 0:
            from verl_ext.core.config import ConfigError

            raise ConfigError("VERL_FILE_LOGGER_PATH", metrics, "a metrics file that does not exist yet (verl's file "
                              "logger would truncate this one); unset it and the run writes a new "
                              f"{run_dir}/metrics-<stamp>-<pid>.jsonl")
        if not metrics:  # a new file per launch, created here: verl's file logger truncates its file when it starts
            metrics = run_layout.reserve_metrics_file(run_dir)
            env_vars["VERL_FILE_LOGGER_PATH"] = metrics
        if "wandb" in config.trainer.logger:
            if not os.environ.get("WANDB_DIR") and "WANDB_DIR" not in env_vars:
                env_vars["WANDB_DIR"] = run_dir
            if not os.environ.get("WANDB_MODE") and "WANDB_MODE" not in env_vars:
                env_vars["WANDB_MODE"] = "offline"
        if "tensorboard" in config.trainer.logger and not (os.environ.get("TENSORBOARD_DIR") or "TENSORBOARD_DIR" in env_vars):
            env_vars["TENSORBOARD_DIR"] = os.path.join(run_dir, "tensorboard")  # verl's default is cwd-relative
    os.makedirs(os.path.dirname(os.path.abspath(metrics)), exist_ok=True)
    _warn_if_in_job_copy({"trainer.default_local_dir": run_dir, "metrics file": metrics,
                          "WANDB_DIR": env_vars.get("WANDB_DIR") or os.environ.get("WANDB_DIR")})
    return metrics


def _warn_if_in_job_copy(paths: dict) -> list[str]:
    copy = run_layout.ray_job_working_dir()
    if not copy:
        return []
    lost = [f"{what}={path}" for what, path in paths.items() if path and run_layout.inside(path, copy)]
    if lost:
        bar = "!" * 100
        print(f"\n{bar}\n[gxpo] WARNING: this Ray job's outputs would land inside its working_dir copy "
              f"({copy}):\n  " + "\n  ".join(lost) + "\nRay deletes or replaces that copy with the next code "
              "upload or Ray session: checkpoints are lost, resume_mode=auto never finds them, and multi-GB "
              "checkpoints fill /tmp. Set trainer.default_local_dir=/shared/path/<run> (or submit with "
              f"python -m launch.submit --log-dir /shared/path).\n{bar}\n", file=sys.stderr, flush=True)
    return lost


def finished_run_note(config: DictConfig) -> str | None:
    """With ``resume_mode=auto``, a run directory whose latest checkpoint already reached
    ``total_training_steps`` has nothing left to train: say so instead of starting Ray for nothing."""
    if config.trainer.get("resume_mode") != "auto" or config.trainer.get("val_only"):  # val_only trains nothing
        return None
    total = config.trainer.get("total_training_steps")
    ckpt_dir = str(config.trainer.default_local_dir)
    step = run_layout.latest_checkpoint_step(ckpt_dir)
    if not isinstance(total, int) or step is None or step < total:
        return None
    return (f"nothing to train: this run already finished ({ckpt_dir} has its checkpoint at step {step}, "
            f"trainer.total_training_steps={total}, trainer.resume_mode=auto resumes it). To train more steps, "
            f"raise trainer.total_training_steps; to start a fresh run, give it another trainer.experiment_name=... "
            f"(or trainer.default_local_dir=...), or delete {ckpt_dir}.")


def run_gxpo(config: DictConfig) -> None:
    import ray
    from verl.trainer.main_ppo import run_ppo

    from recipe.gxpo.data_check import check_data_files
    from recipe.gxpo.embedded import embedded_data_files, prepare_embedded_assets
    from recipe.gxpo.embedded_vllm import use_vllm_model_variant
    from recipe.gxpo.preemption import DriverStop
    from recipe.gxpo.resume import plan_resume
    from recipe.gxpo.run_lock import hold_run_dir
    from recipe.gxpo.summary import summarize
    from verl_ext.rewards import guard
    from verl_ext.workers.task_runner import GXPOTaskRunner

    validate_update_rule(config)  # fail fast, before building anything
    rule = config.actor_rollout_ref.actor.update_rule
    run_dir = os.path.abspath(os.path.expanduser(str(config.trainer.default_local_dir)))
    note = finished_run_note(config)
    if note:  # nothing to train: nothing is built, locked or written
        print(f"[gxpo] {note}", flush=True)
        print(summarize(run_dir, run_dir, rule, note=note))
        return
    plan_resume(config)  # the newest whole checkpoint, checked before Ray (recipe/gxpo/resume.py)
    guard.install(config)  # reward.non_finite, and the reward function loads (verl_ext/rewards/guard.py)
    check_data_files(config, skip=tuple(embedded_data_files(config)))  # the user's files (read only), before any build
    # one live run per directory: held from here until this process ends the run (recipe/gxpo/run_lock.py)
    with hold_run_dir(run_dir):
        for path in prepare_embedded_assets(config):
            print(f"[gxpo] built embedded asset: {path}")
        for path in use_vllm_model_variant(config):  # rollout.name=vllm on the embedded task
            print(f"[gxpo] built embedded asset: {path}")
        check_data_files(config)
        validate_verl_config(config)
        metrics_path = prepare_outputs(config)
        _export_plugins(config)
        _fit_ray_init(config)
        _fit_runtime_env_to_job(config)
        started_ray = not ray.is_initialized()
        stop, failure = DriverStop(config), None  # SIGTERM: checkpoint, exit 75 (recipe/gxpo/preemption.py)
        try:
            run_ppo(config, task_runner_class=stop.runner(GXPOTaskRunner))
        except BaseException as e:  # noqa: BLE001  (reported below, after Ray is down, with the resume line last)
            failure = e
        finally:
            stop.close()
            if started_ray and ray.is_initialized():  # free the run's resources (the next job of a multirun needs them)
                ray.shutdown()
        if failure is not None:
            stop.fail(failure)  # the error (a reward fault: the function's exception, once), then the resume line
    print(summarize(os.path.dirname(metrics_path), config.trainer.default_local_dir, rule, note=stop.note()))
    stop.exit_if_stopped()


def _swept_overrides() -> list[tuple[str, str]]:
    """The keys a Hydra multirun sweeps (command-line sweep overrides and ``hydra.sweeper.params``),
    with this job's values; empty outside a multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return []
    hc = HydraConfig.get()
    parser = OverridesParser.create()
    cli = [a for a in sys.argv[1:] if "=" in a and not a.startswith("-")]  # overrides, not Hydra's flags
    swept = [o.key_or_group for o in parser.parse_overrides(cli) if o.is_sweep_override()]
    swept += [k for k in (hc.sweeper.get("params") or {}) if k not in swept]
    values = {o.key_or_group: o.value() for o in parser.parse_overrides(list(hc.overrides.task))}
    return [(k, str(values[k])) for k in swept if k in values]


@hydra.main(config_path="config", config_name="gxpo_trainer", version_base=None)
def main(config: DictConfig) -> None:
    swept = _swept_overrides()
    if swept:
        suffix = name_multirun_job(config, swept)
        print(f"[gxpo] multirun job {suffix}: trainer.experiment_name={config.trainer.experiment_name}, "
              f"trainer.default_local_dir={config.trainer.default_local_dir}", flush=True)
    run_gxpo(config)


if __name__ == "__main__":
    main()
