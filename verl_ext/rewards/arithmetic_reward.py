"""Exact-integer reward for the embedded arithmetic task (:mod:`verl_ext.data.arithmetic`).

Same calling convention as :func:`verl_ext.rewards.math_reward.compute_score` (verl calls it by
keyword: ``data_source, solution_str, ground_truth, extra_info`` plus ``reward_kwargs``), and the
same result keys (``score``, ``acc``, ``pred``) so both can feed one run's metrics.

The answer is the content of the LAST ``\\boxed{...}`` when the response has one (it must be a
plain integer, e.g. ``\\boxed{7}`` or ``\\boxed{ -3 }``), otherwise the LAST integer written in the
response (``"7"``, ``"3+4=7"``). Decimals (``7.0``) and other junk do not count. 1.0 on an exact
match with the integer ground truth, else 0.0. Pure string code: no sympy, never raises.
"""

from __future__ import annotations

import re
from typing import Any, Optional

__all__ = ["compute_score", "extract_integer"]

_INT_TOKEN_RE = re.compile(r"[-+]?\d+(?:\.\d+)?")
_BOXED_RE = re.compile(r"\\boxed\s*\{\s*([^{}]*?)\s*\}")
_PLAIN_INT_RE = re.compile(r"[-+]?\d+")

#: Only this many trailing characters of a response are scanned (responses are tiny here).
MAX_SCAN_CHARS = 4096


def extract_integer(solution_str: object) -> Optional[int]:
    """The integer answer of a response, or None (see module docstring)."""
    if isinstance(solution_str, bytes):
        solution_str = solution_str.decode("utf-8", errors="replace")
    if not isinstance(solution_str, str):
        return None
    text = solution_str[-MAX_SCAN_CHARS:]
    if "\\boxed" in text:
        last_box_pos = text.rfind("\\boxed")
        # the last "\boxed" must be a complete one: compare with the last complete match
        complete = list(_BOXED_RE.finditer(text))
        if not complete or complete[-1].start() != last_box_pos:
            return None
        content = complete[-1].group(1).strip()
        if not _PLAIN_INT_RE.fullmatch(content):
            return None
        return _to_int(content)
    tokens = _INT_TOKEN_RE.findall(text)
    if not tokens:
        return None
    last = tokens[-1]
    if "." in last:
        return None
    return _to_int(last)


def _to_int(s: str) -> Optional[int]:
    try:
        if len(s.lstrip("+-")) > 30:  # not a small-integer answer
            return None
        return int(s)
    except (ValueError, TypeError):
        return None


def _gold_int(ground_truth: object) -> Optional[int]:
    if isinstance(ground_truth, bool):
        return None
    if isinstance(ground_truth, int):
        return ground_truth
    if isinstance(ground_truth, float):
        return int(ground_truth) if ground_truth.is_integer() else None
    if isinstance(ground_truth, bytes):
        ground_truth = ground_truth.decode("utf-8", errors="replace")
    if isinstance(ground_truth, str) and _PLAIN_INT_RE.fullmatch(ground_truth.strip()):
        return _to_int(ground_truth.strip())
    return None


def compute_score(
    data_source: Any = None,
    solution_str: Any = None,
    ground_truth: Any = None,
    extra_info: Optional[dict] = None,
    **kwargs: Any,
) -> dict:
    """``{"score": 1.0|0.0, "acc": 1.0|0.0, "pred": str}`` -- exact integer match."""
    try:
        gold = _gold_int(ground_truth)
        pred = extract_integer(solution_str)
        ok = gold is not None and pred is not None and pred == gold
        pred_s = "" if pred is None else str(pred)
    except Exception:  # noqa: BLE001 - never raise inside the trainer
        ok, pred_s = False, ""
    score = 1.0 if ok else 0.0
    return {"score": score, "acc": score, "pred": pred_s}
