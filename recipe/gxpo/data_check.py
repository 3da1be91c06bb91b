"""The training and validation files, checked on the driver before Ray starts.

verl reads ``data.train_files`` / ``data.val_files`` inside its TaskRunner, after Ray and the
workers are up; a typo'd path or a file without the prompt column failed there, minutes later
(``KeyError: 'prompt'`` at the first batch). :func:`check_data_files` checks every local file
first: it exists, is a readable file of a format verl's ``RLHFDataset`` loads (``.parquet``,
``.json``, ``.jsonl``), has rows, and has the columns this config reads:

* ``data.prompt_key`` (default ``prompt``): chat messages ``[{"role": ..., "content": ...}]``;
* ``data_source`` and ``reward_model.ground_truth``: what verl's registered reward managers
  (``naive``, ``dapo``, ...) pass to the reward function (not needed when a reward model scores
  without a custom function, or with a reward manager of the user's own).

Each error names the config key, the file, the column and what is allowed. Remote paths
(``hdfs://``, ...) are left to verl. Reads only: nothing is written.
"""

from __future__ import annotations

import json
import os

from omegaconf import DictConfig, ListConfig

FORMATS = (".parquet", ".json", ".jsonl")
REWARD_COLUMNS = ("data_source", "reward_model.ground_truth")


class DataFileError(ValueError):
    """A training or validation file verl could not train on."""


def data_files(config: DictConfig) -> list[tuple[str, str]]:
    """``[(config key, path)]`` of every training and validation file."""
    out = []
    for key in ("train_files", "val_files"):
        value = config.data.get(key)
        if value is None:
            continue
        paths = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
        out += [(f"data.{key}", str(p)) for p in paths]
    return out


def required_columns(config: DictConfig) -> list[str]:
    """The columns (dotted for struct fields) this config reads from every row."""
    cols = [str(config.data.get("prompt_key") or "prompt")]
    reward = config.get("reward") or {}
    manager = reward.get("reward_manager") or {}
    custom = (reward.get("custom_reward_function") or {}).get("path")
    rm_only = bool((reward.get("reward_model") or {}).get("enable")) and not custom
    if manager.get("source", "register") == "register" and not rm_only:
        cols += list(REWARD_COLUMNS)
    return cols


def _is_remote(path: str) -> bool:
    return "://" in path


def _parquet_columns(path: str) -> tuple[int, dict, object]:
    """(rows, {column: arrow type}, first row as a dict or None)."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    schema = pf.schema_arrow
    first = None
    n = pf.metadata.num_rows
    if n and pf.num_row_groups:
        table = pf.read_row_group(0)
        first = table.slice(0, 1).to_pylist()[0] if table.num_rows else None
    return n, {f.name: f.type for f in schema}, first


def _json_columns(path: str) -> tuple[int, dict, object]:
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            rows = [json.loads(line) for line in f if line.strip()]
        else:
            data = json.load(f)
            rows = data if isinstance(data, list) else [data]
    first = rows[0] if rows else None
    return len(rows), ({k: None for k in first} if isinstance(first, dict) else {}), first


def _has_column(columns: dict, first, dotted: str) -> bool:
    import pyarrow as pa

    head, _, field = dotted.partition(".")
    if head not in columns:
        return False
    if not field:
        return True
    typ = columns[head]
    if isinstance(typ, pa.StructType):
        return typ.get_field_index(field) >= 0
    if isinstance(first, dict) and isinstance(first.get(head), dict):  # json rows, or a map column
        return field in first[head]
    return typ is None and first is None


def _is_chat(value) -> bool:
    if hasattr(value, "tolist"):
        value = value.tolist()
    return (isinstance(value, (list, tuple)) and len(value) > 0
            and all(isinstance(m, dict) and "role" in m and "content" in m for m in value))


def check_file(key: str, path: str, columns: list[str], prompt_key: str) -> None:
    """One file (see the module docstring); raises :class:`DataFileError`."""
    where = f"{key}: {path}"
    if not os.path.exists(path):
        folder = os.path.dirname(os.path.abspath(path))
        hint = "" if os.path.isdir(folder) else f" (its folder {folder} does not exist either)"
        raise DataFileError(f"{where} does not exist{hint}; give the path of a .parquet (or .json/.jsonl) file")
    if os.path.isdir(path):
        raise DataFileError(f"{where} is a folder; give the path of a .parquet (or .json/.jsonl) file in it")
    if not path.endswith(FORMATS):
        raise DataFileError(f"{where}: verl reads {' | '.join(FORMATS)} files only")
    if not os.access(path, os.R_OK):
        raise DataFileError(f"{where} is not readable by this user")
    if os.path.getsize(path) == 0:
        raise DataFileError(f"{where} is empty (0 bytes)")
    try:
        n, cols, first = _parquet_columns(path) if path.endswith(".parquet") else _json_columns(path)
    except Exception as e:  # noqa: BLE001  (pyarrow / json raise many types for a damaged file)
        raise DataFileError(f"{where} cannot be read: {type(e).__name__}: {e}") from None
    if n == 0:
        raise DataFileError(f"{where} has no rows")
    have = ", ".join(cols) or "none"
    for col in columns:
        if not _has_column(cols, first, col):
            what = ("the prompt column (data.prompt_key)" if col == prompt_key
                    else "a column verl's reward manager passes to the reward function")
            raise DataFileError(f"{where} has no column {col!r}, {what}; its columns: {have}. Allowed: rows with "
                                f"{', '.join(repr(c) for c in columns)} (set data.prompt_key=<column> if the prompts "
                                "are in another column; see verl_ext/data/rows.py for the row format)")
    if first is not None and not _is_chat(first.get(prompt_key)):
        shown = repr(first.get(prompt_key))[:120]
        raise DataFileError(f"{where}: column {prompt_key!r} (data.prompt_key) holds {shown} in its first row; allowed: "
                            "chat messages, a list of {'role': ..., 'content': ...}")


def check_data_files(config: DictConfig, skip: tuple[str, ...] = ()) -> list[str]:
    """Check every local training and validation file except those in ``skip``; return the checked paths."""
    columns = required_columns(config)
    prompt_key = columns[0]
    checked = []
    for key, path in data_files(config):
        full = os.path.abspath(os.path.expanduser(path)) if not _is_remote(path) else path
        if _is_remote(path) or full in skip:
            continue
        check_file(key, full, columns, prompt_key)
        checked.append(full)
    return checked
