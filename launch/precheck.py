"""The driver's config checks, run by the launchers before anything is submitted.

``launch.submit`` / ``launch.sweep`` / ``launch.paper_table1`` compose each job's config here with
Hydra, exactly as ``recipe.gxpo.main_gxpo`` will on the cluster (same config module, same
overrides), and run the entry point's own cheap checks on it
(:func:`recipe.gxpo.main_gxpo.validate_update_rule`: the update rule and its sections, CAPO, NExt's
need for LoRA adapters, the trainer mode, ...). A bad key or value is then refused on the submitting
machine, naming the run, the key, the value and what is allowed -- not minutes later in a Ray job
log, and not after half a sweep was submitted. Checks that need the cluster (model files, GPUs,
verl's resource checks) stay in the job. ``--no-precheck`` skips this (e.g. a custom ``--module``).

A launcher job goes to a cluster, so the recipe's *default* experiment, the embedded CPU task
(``experiment=cpu_arithmetic``: a 164k-parameter model on two-digit addition), is refused there
unless named: a submission that forgot ``experiment=paper_math`` would otherwise run the toy on the
allocation's GPUs under a paper-looking name (:func:`check_cluster_experiment`).
"""

from __future__ import annotations

import contextlib
import shlex
from typing import Any, Mapping, Sequence

CONFIG_MODULE = "recipe.gxpo.config"
CONFIG_NAME = "gxpo_trainer"
EMBEDDED_EXPERIMENT = "cpu_arithmetic"  # the recipe's default experiment (conf/experiment/cpu_arithmetic.yaml)


class PrecheckError(ValueError):
    """A job's config does not compose, or the entry point's checks refuse it."""


def job_overrides(job: Mapping[str, Any], module: str) -> list[str] | None:
    """The Hydra overrides of a job built by :func:`launch.submit.build_job` (``python -m <module> ...``);
    None when its entry point is not ``module``."""
    argv = shlex.split(job["entrypoint"])
    if len(argv) < 3 or argv[1:3] != ["-m", module]:
        return None
    return argv[3:]


@contextlib.contextmanager
def recipe_composer():
    """Yields ``compose(overrides) -> DictConfig``: the recipe's config as ``main_gxpo`` composes it
    (Hydra errors propagate). One Hydra initialisation for any number of composes."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
            yield lambda overrides: compose(CONFIG_NAME, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def check_overrides(overrides_by_run: Sequence[tuple[str, Sequence[str]]]) -> int:
    """Compose and check each (run name, overrides); raises :class:`PrecheckError` at the first bad
    one. Returns the number of configs checked."""
    from recipe.gxpo.main_gxpo import validate_update_rule

    n = 0
    with recipe_composer() as compose:
        for name, overrides in overrides_by_run:
            try:
                cfg = compose(overrides)
            except Exception as exc:  # Hydra's override / composition errors
                raise PrecheckError(f"run {name}: the recipe's config does not compose with these overrides: {exc}") from exc
            try:
                validate_update_rule(cfg)
            except ValueError as exc:  # ConfigError names the key, the value and what is allowed
                raise PrecheckError(f"run {name}: {exc}") from exc
            check_cluster_experiment(name, overrides, cfg)
            n += 1
    return n


def names_experiment(overrides: Sequence[str]) -> str | None:
    """The ``experiment=`` option the overrides select (the last one wins, as in Hydra), or None."""
    chosen = None
    for ov in overrides:
        key, sep, value = ov.lstrip("+").partition("=")
        if sep and key == "experiment":
            chosen = value
    return chosen


def check_cluster_experiment(name: str, overrides: Sequence[str], cfg) -> None:
    """Refuse the embedded CPU task on a cluster unless the overrides name it (module docstring)."""
    if "gxpo_embedded" not in cfg or names_experiment(overrides) == EMBEDDED_EXPERIMENT:
        return
    raise PrecheckError(
        f"run {name}: no experiment= given, so it would run the recipe's default, the embedded CPU task "
        f"(experiment={EMBEDDED_EXPERIMENT}: a 164k-parameter model on two-digit addition, whatever GPUs the "
        "cluster has). Name the experiment after '--': experiment=paper_math (the paper's protocol; with "
        f"base_model=... method=...), or experiment={EMBEDDED_EXPERIMENT} to run the embedded task on purpose")


def check_jobs(jobs: Sequence[Mapping[str, Any]], module: str) -> int:
    """:func:`check_overrides` for launcher jobs (run name from the job's metadata); jobs whose entry
    point is not ``module`` are not checked. Returns the number checked."""
    items = []
    for job in jobs:
        ovs = job_overrides(job, module)
        if ovs is not None:
            items.append((job.get("metadata", {}).get("run_name", job["submission_id"]), ovs))
    return check_overrides(items)
