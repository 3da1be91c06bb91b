"""The embedded default task: a warm-started tiny Qwen2 and two-digit addition, built locally on first use.

``conf/experiment/cpu_arithmetic.yaml`` points ``actor_rollout_ref.model.path`` and
``data.{train,val}_files`` into ``gxpo_embedded.dir/<gxpo_embedded.version>`` (default
``~/.cache/verl-gxpo/...``). When a configured path lies under ``gxpo_embedded.dir``,
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
caches of older designs are never picked up. Paths anywhere else are left alone, so GPU configs never
touch this.
"""

from __future__ import annotations

import json
import os

from omegaconf import DictConfig, OmegaConf

DATA_MANIFEST = "verl_ext_data_manifest.json"


def _under(path: str, root: str) -> bool:
    path, root = os.path.abspath(os.path.expanduser(path)), os.path.abspath(os.path.expanduser(root))
    return os.path.commonpath([path, root]) == root


def _section(emb: DictConfig, key: str) -> dict:
    value = emb.get(key)
    return dict(OmegaConf.to_container(value, resolve=True)) if value is not None else {}


def _prepare_data(config: DictConfig, data_args: dict) -> bool:
    from verl_ext.data.arithmetic import make_arithmetic_dataset

    data_dir = os.path.dirname(os.path.abspath(os.path.expanduser(str(config.data.train_files))))
    manifest_path = os.path.join(data_dir, DATA_MANIFEST)
    wanted = {"builder": "verl_ext.data.arithmetic", "args": data_args}
    files = [os.path.join(data_dir, "train.parquet"), os.path.join(data_dir, "val.parquet")]
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
    """Build (or reuse) the data and model the config asks for under ``gxpo_embedded.dir``; return what was built."""
    emb = config.get("gxpo_embedded")
    if emb is None:
        return []
    root = str(emb.dir)
    built = []

    files = [config.data.train_files, *([config.data.val_files] if isinstance(config.data.val_files, str) else config.data.val_files)]
    wanted = [str(f) for f in files if _under(str(f), root)]
    data_args = _section(emb, "data")
    if wanted:
        if _prepare_data(config, data_args):
            built.append(os.path.dirname(str(config.data.train_files)))
        missing = [f for f in wanted if not os.path.exists(f)]
        if missing:
            raise FileNotFoundError(f"embedded task did not produce {missing}; data files must be train.parquet/val.parquet in one folder")

    model_path = os.path.abspath(os.path.expanduser(str(config.actor_rollout_ref.model.path)))
    if _under(model_path, root):
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
