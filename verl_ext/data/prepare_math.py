"""CLI: write the GXPO math parquet files for verl.

    python -m verl_ext.data.prepare_math --out_dir ~/data/gxpo_math \\
        [--sets train,math500,amc23,gsm8k,minerva,olympiadbench] [--source_dir DIR] \\
        [--train_levels 3,4,5] [--train_set math_train|math_train_test] \\
        [--prompt authors|verl|sfpo|qwen] [--hub_id set=owner/name ...]

Defaults reproduce the authors' paper-protocol data (their ``prepare_gxpo_data.sh``): the MATH
training split at levels 3-5 (~5.6k problems; ``--train_set math_train_test`` gives the ~8.5k
train + test minus MATH-500 set) and their prompts (``--prompt authors``: verl's instruction for
training, SFPO's prompt for evaluation; see :mod:`verl_ext.data.prompts`).

Without ``--source_dir`` every set is loaded from the Hugging Face hub with
``datasets.load_dataset`` (ids in :mod:`verl_ext.data.math_datasets`). With it, set ``S`` is read
from ``DIR/S.jsonl`` / ``DIR/S.json`` / ``DIR/S.parquet`` or every such file under ``DIR/S/``,
with the hub copy's field names -- e.g. after ``load_dataset(...).to_json("DIR/S.jsonl")`` on a
machine with network access.

Writes ``<out_dir>/<set>.parquet`` (``train.parquet``, ``math500.parquet``, ...) and prints one
JSON line per set with its path and row counts. In verl::

    data.train_files=<out_dir>/train.parquet
    data.val_files=[<out_dir>/math500.parquet,<out_dir>/amc23.parquet,...]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from verl_ext.data.math_datasets import ALL_SETS, DEFAULT_TRAIN_SET, TRAIN_SETS, prepare
from verl_ext.data.prompts import DEFAULT_PROMPT_STYLE, PROMPT_STYLES


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m verl_ext.data.prepare_math", description=__doc__.split("\n\n")[0])
    p.add_argument("--out_dir", required=True, help="output folder for <set>.parquet")
    p.add_argument("--sets", default=",".join(ALL_SETS), help=f"comma list from {','.join(ALL_SETS)}")
    p.add_argument("--source_dir", default=None, help="read local json/jsonl/parquet copies instead of the hub")
    p.add_argument("--train_levels", default="3,4,5", help="MATH levels kept in the train split")
    p.add_argument(
        "--train_set",
        default=DEFAULT_TRAIN_SET,
        choices=TRAIN_SETS,
        help="math_train: MATH train split (~5.6k at levels 3-5, the authors' choice); "
        "math_train_test: train + test minus MATH-500 (~8.5k)",
    )
    p.add_argument(
        "--prompt",
        default=DEFAULT_PROMPT_STYLE,
        choices=PROMPT_STYLES,
        help="authors: verl's instruction for train, SFPO's prompt for eval (the authors' scripts); "
        "verl / sfpo / qwen: that prompt for every set",
    )
    p.add_argument(
        "--hub_id",
        action="append",
        default=[],
        metavar="SET=OWNER/NAME",
        help="use another hub copy for a set (same field names), repeatable",
    )
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    sets = _csv(args.sets)
    bad = [s for s in sets if s not in ALL_SETS]
    if bad:
        print(f"unknown set(s): {bad}; choose from {list(ALL_SETS)}", file=sys.stderr)
        return 2
    hub_ids = {}
    for item in args.hub_id:
        if "=" not in item:
            print(f"--hub_id wants SET=OWNER/NAME, got {item!r}", file=sys.stderr)
            return 2
        k, v = item.split("=", 1)
        hub_ids[k.strip()] = v.strip()
    levels = [int(x) for x in _csv(args.train_levels)]
    report = prepare(
        args.out_dir,
        sets=sets,
        source_dir=args.source_dir,
        hub_ids=hub_ids,
        train_levels=levels,
        prompt=args.prompt,
        train_set=args.train_set,
    )
    for name, info in report.items():
        print(json.dumps({"set": name, **info}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
