"""The embedded default task: a tiny Qwen2 and a small arithmetic data set, built locally on first use.

The recipe's default config points ``actor_rollout_ref.model.path`` and ``data.{train,val}_files``
into ``gxpo_embedded.dir`` (default ``~/.cache/verl-gxpo``). When a configured path lies there and
is missing, :func:`prepare_embedded_assets` builds it (deterministically, from the seeds below),
before Ray starts. Paths anywhere else are left alone, so GPU configs never touch this.
"""

from __future__ import annotations

import os

from omegaconf import DictConfig


def _under(path: str, root: str) -> bool:
    path, root = os.path.abspath(os.path.expanduser(path)), os.path.abspath(os.path.expanduser(root))
    return os.path.commonpath([path, root]) == root


def prepare_embedded_assets(config: DictConfig) -> list[str]:
    """Build the tiny model / arithmetic parquet files the config asks for under ``gxpo_embedded.dir``."""
    emb = config.get("gxpo_embedded")
    if emb is None:
        return []
    root = str(emb.dir)
    built = []
    model_path = str(config.actor_rollout_ref.model.path)
    if _under(model_path, root) and not os.path.exists(os.path.join(model_path, "config.json")):
        from verl_ext.models.tiny import build_tiny_model

        build_tiny_model(model_path, **dict(emb.get("model", {}) or {}))
        built.append(model_path)

    files = [config.data.train_files, *([config.data.val_files] if isinstance(config.data.val_files, str) else config.data.val_files)]
    wanted = [str(f) for f in files if _under(str(f), root)]
    if any(not os.path.exists(f) for f in wanted):
        from verl_ext.data.arithmetic import make_arithmetic_dataset

        data_dir = os.path.dirname(str(config.data.train_files))
        make_arithmetic_dataset(data_dir, **dict(emb.get("data", {}) or {}))
        built.append(data_dir)
        missing = [f for f in wanted if not os.path.exists(f)]
        if missing:
            raise FileNotFoundError(f"embedded task did not produce {missing}; data files must be train.parquet/val.parquet in one folder")
    return built
