"""The embedded default task: a warm-started tiny Qwen2 and two-digit addition, built locally on first use.

``conf/experiment/cpu_arithmetic.yaml`` points ``actor_rollout_ref.model.path`` and
``data.{train,val}_files`` into ``gxpo_embedded.dir/<gxpo_embedded.version>`` (default
``~/.cache/verl-gxpo/...``). When a configured path is one of these embedded paths,
:func:`prepare_embedded_assets` makes sure it holds exactly what ``gxpo_embedded`` describes, before
Ray starts, building what is missing or stale:

1. the data (:func:`verl_ext.data.arithmetic.make_arithmetic_dataset` with ``gxpo_embedded.data``):
   ``train.parquet`` and a held-out ``val.parquet`` that shares no problem with it;
2. the random base model (:func:`verl_ext.models.tiny.build_tiny_model` with ``gxpo_embedded.model``)
   in ``<model.path>-base`` when a warm start is configured, else at ``model.path`` itself;
3. the warm start (:func:`verl_ext.models.warm_start.supervised_warm_start` with
   ``gxpo_embedded.warm_start``): supervised training on the training problems only, written to
   ``model.path``.

Every step is deterministic and records its arguments in a manifest; an asset whose manifest
matches is reused, so only the first run pays for the build (the warm start: 500 single-thread
steps, about 3 CPU-minutes; measured 21 min wall on a 2-core machine shared at load 20-70). ``gxpo_embedded.version`` is part of the paths: a new task design bumps it, so
caches of older designs are never picked up. Paths anywhere else -- a user's own data file or
folder, even one inside the cache -- are left alone: nothing is written into or beside them, and GPU
configs never touch this.
"""

from __future__ import annotations

import json
import os

from omegaconf import DictConfig, OmegaConf

DATA_MANIFEST = "verl_ext_data_manifest.json"
DATA_FOLDER = "arithmetic"
DATA_FILES = ("train.parquet", "val.parquet")


def _section(emb: DictConfig, key: str) -> dict:
    value = emb.get(key)
    return dict(OmegaConf.to_container(value, resolve=True)) if value is not None else {}


def _abs(path) -> str:
    return os.path.abspath(os.path.expanduser(str(path)))


def embedded_data_dir(emb: DictConfig) -> str:
    """The one folder the embedded data is built in: ``<gxpo_embedded.dir>/<version>/arithmetic``."""
    return os.path.join(_abs(emb.dir), str(emb.version), DATA_FOLDER)


def embedded_data_files(config: DictConfig) -> list[str]:
    """The configured data files that ARE the embedded task's (``train.parquet`` / ``val.parquet`` of
    :func:`embedded_data_dir`); any other path is the user's and is never written."""
    emb = config.get("gxpo_embedded")
    if emb is None:
        return []
    from recipe.gxpo.data_check import data_files

    ours = {os.path.join(embedded_data_dir(emb), name) for name in DATA_FILES}
    return [_abs(p) for _, p in data_files(config) if _abs(p) in ours]


def is_embedded_model(emb: DictConfig, model_path: str) -> bool:
    """Whether ``model_path`` is the embedded task's own model (directly in ``<gxpo_embedded.dir>/<version>``)."""
    return os.path.dirname(_abs(model_path)) == os.path.join(_abs(emb.dir), str(emb.version))


def _prepare_data(data_dir: str, data_args: dict) -> bool:
    from verl_ext.data.arithmetic import make_arithmetic_dataset

    manifest_path = os.path.join(data_dir, DATA_MANIFEST)
    wanted = {"builder": "verl_ext.data.arithmetic", "args": data_args}
    files = [os.path.join(data_dir, name) for name in DATA_FILES]
    try:
        with open(manifest_path, encoding="utf-8") as f:
            current = json.load(f)
    except (OSError, ValueError):
        current = None
    if current == wanted and all(os.path.exists(f) for f in files):
        return False
    make_arithmetic_dataset(data_dir, **data_args)
    with open(manifest_path, "w", encoding="utf-8") as f:
        json.dump(wanted, f, indent=2, sort_keys=True)
    return True


def prepare_embedded_assets(config: DictConfig) -> list[str]:
    """Build (or reuse) the data and model the config asks for under ``gxpo_embedded.dir``; return what was built.

    Only paths that are the embedded task's own are built, and only in the cache: the data in
    :func:`embedded_data_dir` when ``data.train_files`` / ``data.val_files`` name its files, the model
    when ``actor_rollout_ref.model.path`` lies directly in ``<gxpo_embedded.dir>/<version>``. A file
    or folder the user passed is never written (nothing is built beside it)."""
    emb = config.get("gxpo_embedded")
    if emb is None:
        return []
    built = []

    data_args = _section(emb, "data")
    if embedded_data_files(config):
        data_dir = embedded_data_dir(emb)
        if _prepare_data(data_dir, data_args):
            built.append(data_dir)

    model_path = _abs(config.actor_rollout_ref.model.path)
    if is_embedded_model(emb, model_path):
        from verl_ext.models.tiny import MANIFEST as TINY_MANIFEST
        from verl_ext.models.tiny import build_tiny_model

        warm = _section(emb, "warm_start")
        base_path = model_path + "-base" if warm else model_path
        had_base = os.path.exists(os.path.join(base_path, TINY_MANIFEST))
        build_tiny_model(base_path, **_section(emb, "model"))
        if not had_base:
            built.append(base_path)
        if warm:
            from verl_ext.data.arithmetic import training_pool
            from verl_ext.models.warm_start import MANIFEST as WARM_MANIFEST
            from verl_ext.models.warm_start import supervised_warm_start

            before = os.path.getmtime(os.path.join(model_path, WARM_MANIFEST)) if os.path.exists(os.path.join(model_path, WARM_MANIFEST)) else None
            if before is None:
                print(f"[gxpo] building the warm-started model (once): {model_path}", flush=True)
            supervised_warm_start(base_path, model_path, training_pool(**data_args), **warm)
            after = os.path.getmtime(os.path.join(model_path, WARM_MANIFEST))
            if after != before:
                built.append(model_path)
    return built
