"""Embedded default CPU task: tiny integer arithmetic in the verl row format.

Built for the laptop-scale run in which a ~100k-parameter random model with a character-level
tokenizer has to learn the task from scratch in ~100 RL steps, so it is deliberately easy and the
strings are short:

* prompt (one user message): ``"What is 3+4?"`` -- the ``template`` has ``{a}``, ``{op}``, ``{b}``
  (content length stays well under 40 characters for small operands);
* ground truth: the integer result as a string (``"7"``);
* a response is correct when the last ``\\boxed{}`` or, without a box, the last integer in it equals
  the result (:mod:`verl_ext.rewards.arithmetic_reward`): ``"7"`` is a complete correct answer.

Difficulty knobs: ``max_operand`` / ``min_operand`` (operands are drawn from that inclusive range),
``ops`` (any of ``+``, ``-``, ``*``; subtraction keeps results non-negative unless
``allow_negative``). The default -- single-digit addition -- has 100 distinct problems.

Splits: all distinct problems are enumerated and shuffled with ``seed``; the first ``n_val`` form the
validation set (distinct), and the training set is drawn from the rest only (so train and val never
share a problem). If ``n_train`` exceeds the remaining distinct problems, training problems repeat:
the pool is cycled in freshly shuffled passes. Output is fully determined by the arguments.

CLI::

    python -m verl_ext.data.arithmetic --out_dir DIR [--n_train 1024] [--n_val 32] [--seed 0]
        [--max_operand 9] [--min_operand 0] [--ops +] [--allow_negative]

writes ``DIR/train.parquet`` and ``DIR/val.parquet`` (``data_source`` ``"arithmetic"``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from typing import Iterable, Optional, Sequence

from verl_ext.data.rows import make_row, write_rows

__all__ = [
    "DATA_SOURCE",
    "DEFAULT_TEMPLATE",
    "OPS",
    "enumerate_problems",
    "make_arithmetic_rows",
    "make_arithmetic_dataset",
    "training_pool",
    "main",
]

DATA_SOURCE = "arithmetic"
DEFAULT_TEMPLATE = "What is {a}{op}{b}?"

#: Supported operators -> (name used in ``extra_info.type``, function).
OPS = {
    "+": ("add", lambda a, b: a + b),
    "-": ("sub", lambda a, b: a - b),
    "*": ("mul", lambda a, b: a * b),
}


def _norm_ops(ops: Iterable[str]) -> tuple[str, ...]:
    out = []
    for op in ops:
        for ch in str(op):
            if ch in (",", " "):
                continue
            if ch not in OPS:
                raise ValueError(f"unsupported operator {ch!r}; use some of {''.join(OPS)}")
            if ch not in out:
                out.append(ch)
    if not out:
        raise ValueError("no operator given")
    return tuple(out)


def enumerate_problems(
    max_operand: int = 9,
    ops: Iterable[str] = ("+",),
    min_operand: int = 0,
    allow_negative: bool = False,
) -> list[tuple[int, str, int, int]]:
    """All distinct ``(a, op, b, result)`` in a fixed order."""
    if max_operand < min_operand:
        raise ValueError(f"max_operand {max_operand} < min_operand {min_operand}")
    probs = []
    for op in _norm_ops(ops):
        fn = OPS[op][1]
        for a in range(min_operand, max_operand + 1):
            for b in range(min_operand, max_operand + 1):
                r = fn(a, b)
                if r < 0 and not allow_negative:
                    continue
                probs.append((a, op, b, r))
    return probs


def _split(n_val, seed, max_operand, ops, min_operand, allow_negative, held_out):
    problems = enumerate_problems(max_operand, ops, min_operand, allow_negative)
    rng = random.Random(seed)
    rng.shuffle(problems)
    if not held_out:
        n_val = 0
    if n_val >= len(problems):
        raise ValueError(
            f"n_val={n_val} leaves no training problems: only {len(problems)} distinct problems "
            f"(raise max_operand or add ops)"
        )
    return problems[n_val:], problems[:n_val], rng


def training_pool(
    n_val: int = 32,
    seed: int = 0,
    max_operand: int = 9,
    ops: Iterable[str] = ("+",),
    min_operand: int = 0,
    allow_negative: bool = False,
    template: str = DEFAULT_TEMPLATE,
    held_out: bool = True,
    **_ignored,
) -> list[tuple[str, str]]:
    """The distinct training problems of a split as ``(question, answer)`` strings, in a fixed order.

    Same arguments (and the same split) as :func:`make_arithmetic_rows`; the validation problems are
    not in it. Extra keyword arguments (``n_train``) are accepted and ignored, so a data config can
    be passed whole. Used by the supervised warm start (:mod:`verl_ext.models.warm_start`).
    """
    pool, _val, _rng = _split(n_val, seed, max_operand, ops, min_operand, allow_negative, held_out)
    return [(template.format(a=a, op=op, b=b), str(r)) for a, op, b, r in pool]


def _row(problem: tuple[int, str, int, int], split: str, index: int, template: str) -> dict:
    a, op, b, r = problem
    question = template.format(a=a, op=op, b=b)
    return make_row(
        data_source=DATA_SOURCE,
        messages=[{"role": "user", "content": question}],
        ground_truth=str(r),
        split=split,
        index=index,
        question=question,
        id=f"{a}{op}{b}",
        type=OPS[op][0],
    )


def make_arithmetic_rows(
    n_train: int = 1024,
    n_val: int = 32,
    seed: int = 0,
    max_operand: int = 9,
    ops: Iterable[str] = ("+",),
    min_operand: int = 0,
    allow_negative: bool = False,
    template: str = DEFAULT_TEMPLATE,
    held_out: bool = True,
) -> tuple[list[dict], list[dict]]:
    """``(train_rows, val_rows)`` -- see the module docstring for the split rule.

    ``held_out=False`` trains on every distinct problem and validates on all of them once each
    (``n_val`` is then ignored): validation measures the task itself rather than generalisation
    to unseen pairs -- what a from-scratch tiny model can show in a few minutes.
    """
    if n_train < 1 or n_val < 0:
        raise ValueError("need n_train >= 1 and n_val >= 0")
    pool, val, rng = _split(n_val, seed, max_operand, ops, min_operand, allow_negative, held_out)
    problems = pool + val
    train: list = []
    order = list(pool)
    while len(train) < n_train:
        take = min(n_train - len(train), len(order))
        train.extend(order[:take])
        order = list(pool)
        rng.shuffle(order)
    if not held_out:
        val = sorted(problems, key=lambda p: (p[1], p[0], p[2]))
    train_rows = [_row(p, "train", i, template) for i, p in enumerate(train)]
    val_rows = [_row(p, "val", i, template) for i, p in enumerate(val)]
    return train_rows, val_rows


def make_arithmetic_dataset(
    out_dir: str,
    n_train: int = 1024,
    n_val: int = 32,
    seed: int = 0,
    max_operand: int = 9,
    ops: Iterable[str] = ("+",),
    min_operand: int = 0,
    allow_negative: bool = False,
    template: str = DEFAULT_TEMPLATE,
    held_out: bool = True,
) -> dict:
    """Write ``out_dir/train.parquet`` and ``out_dir/val.parquet`` (``held_out``: see :func:`make_arithmetic_rows`).

    Returns ``{"train": path, "val": path, "n_train": int, "n_val": int, "n_distinct": int}``.
    """
    train_rows, val_rows = make_arithmetic_rows(
        n_train=n_train,
        n_val=n_val,
        seed=seed,
        max_operand=max_operand,
        ops=ops,
        min_operand=min_operand,
        allow_negative=allow_negative,
        template=template,
        held_out=held_out,
    )
    out_dir = os.path.expanduser(out_dir)
    train_path = write_rows(train_rows, os.path.join(out_dir, "train.parquet"))
    val_path = write_rows(val_rows, os.path.join(out_dir, "val.parquet"))
    n_distinct = len(enumerate_problems(max_operand, ops, min_operand, allow_negative))
    return {
        "train": train_path,
        "val": val_path,
        "n_train": len(train_rows),
        "n_val": len(val_rows),
        "n_distinct": n_distinct,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m verl_ext.data.arithmetic", description="Write the arithmetic task parquet files."
    )
    p.add_argument("--out_dir", required=True)
    p.add_argument("--n_train", type=int, default=1024)
    p.add_argument("--n_val", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_operand", type=int, default=9)
    p.add_argument("--min_operand", type=int, default=0)
    p.add_argument("--ops", default="+", help="operators, e.g. '+' or '+-*'")
    p.add_argument("--allow_negative", action="store_true")
    p.add_argument("--template", default=DEFAULT_TEMPLATE)
    a = p.parse_args(argv)
    info = make_arithmetic_dataset(
        a.out_dir,
        n_train=a.n_train,
        n_val=a.n_val,
        seed=a.seed,
        max_operand=a.max_operand,
        ops=a.ops,
        min_operand=a.min_operand,
        allow_negative=a.allow_negative,
        template=a.template,
    )
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
