"""The verl RL row format shared by every data set of this project, and its parquet I/O.

verl 0.9.1 (``verl/utils/dataset/rl_dataset.py::RLHFDataset``) loads each parquet file with
``datasets.load_dataset("parquet", ...)``, concatenates several files with
``datasets.concatenate_datasets`` (which needs identical column types), and reads per row:

* ``prompt`` (``data.prompt_key``): chat messages ``[{"role": "user", "content": ...}]``;
* ``data_source``: passed to the reward function, and the key of the validation metrics
  ``val-core/{data_source}/acc/mean@N``;
* ``reward_model.ground_truth``: passed to the reward function as ``ground_truth``;
* ``extra_info``: passed to the reward function; ``extra_info.index`` becomes the row index.

``ability`` and ``reward_model.style`` are carried along by convention. Every file is written with
the single explicit arrow schema :data:`ROW_SCHEMA` (``extra_info`` always has the same fields,
empty strings where a source lacks them), so any of our train / validation files can be passed
together in ``data.val_files`` without a type clash.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["ROW_SCHEMA", "EXTRA_INFO_FIELDS", "make_row", "write_rows", "read_rows"]

#: Fields of ``extra_info`` (all strings except ``index``).
EXTRA_INFO_FIELDS = ("split", "index", "id", "level", "type", "question")

ROW_SCHEMA = pa.schema(
    [
        pa.field("data_source", pa.string()),
        pa.field(
            "prompt",
            pa.list_(pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])),
        ),
        pa.field("ability", pa.string()),
        pa.field(
            "reward_model",
            pa.struct([pa.field("style", pa.string()), pa.field("ground_truth", pa.string())]),
        ),
        pa.field(
            "extra_info",
            pa.struct(
                [
                    pa.field("split", pa.string()),
                    pa.field("index", pa.int64()),
                    pa.field("id", pa.string()),
                    pa.field("level", pa.string()),
                    pa.field("type", pa.string()),
                    pa.field("question", pa.string()),
                ]
            ),
        ),
    ]
)


def _s(x: object) -> str:
    return "" if x is None else str(x)


def make_row(
    *,
    data_source: str,
    messages: list[dict],
    ground_truth: str,
    split: str,
    index: int,
    question: str = "",
    id: object = "",  # noqa: A002 - the field's name
    level: object = "",
    type: object = "",  # noqa: A002 - the field's name
    ability: str = "math",
) -> dict:
    """One verl row (plain Python types matching :data:`ROW_SCHEMA`)."""
    return {
        "data_source": str(data_source),
        "prompt": [{"role": _s(m["role"]), "content": _s(m["content"])} for m in messages],
        "ability": ability,
        "reward_model": {"style": "rule", "ground_truth": _s(ground_truth)},
        "extra_info": {
            "split": _s(split),
            "index": int(index),
            "id": _s(id),
            "level": _s(level),
            "type": _s(type),
            "question": _s(question),
        },
    }


def write_rows(rows: Iterable[dict], path: str) -> str:
    """Write rows to ``path`` (parent folders created) with :data:`ROW_SCHEMA`; returns the path."""
    rows = list(rows)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=ROW_SCHEMA)
    pq.write_table(table, path)
    return path


def read_rows(path: str, limit: Optional[int] = None) -> list[dict]:
    """Read rows back as Python dicts (tests, inspection)."""
    table = pq.read_table(path)
    if limit is not None:
        table = table.slice(0, limit)
    return table.to_pylist()
