"""Rule-based math reward (math-verify) for verl's custom reward function hook.

Use from a verl config::

    reward:
      custom_reward_function:
        path: pkg://verl_ext.rewards.math_reward    # or the file path of this module
        name: compute_score
        reward_kwargs: {}                            # optional, e.g. {numeric_fallback: never}

verl 0.9.1 calling convention (``verl/experimental/reward_loop/reward_manager/naive.py``, the
``naive`` reward manager; ``verl/trainer/ppo/reward.py::get_custom_reward_fn`` merges
``reward_kwargs`` into the keyword arguments)::

    compute_score(data_source=..., solution_str=..., ground_truth=..., extra_info=..., **reward_kwargs)

all by keyword, on a worker THREAD (``loop.run_in_executor``). ``ground_truth`` is
``row["reward_model"]["ground_truth"]``; ``solution_str`` is the decoded response only (special tokens
skipped). A dict result must contain ``"score"`` (the reward); every key of it becomes a
``reward_extra_info`` column, and validation reports ``val-core/{data_source}/acc/mean@N`` from
``"acc"`` (``maj@N`` additionally votes on ``"pred"``). All calls must return the same keys.

Scoring: 1.0 when the content of the LAST ``\\boxed{...}`` in the response is equivalent to the
ground truth, else 0.0:

1. cheap exact checks: identical after light normalisation, or both plain numbers with equal value;
2. otherwise math-verify (``parse`` both as ``\\boxed{...}``, ``verify(gold, pred)``), with timeouts
   that work off the main thread (see :mod:`verl_ext.rewards.math_grader`).

Light normalisation (both sides) removes ``\\left``/``\\right``, ``\\!``-style spacing (the row
separator ``\\\\`` of a matrix is kept, its optional ``[2pt]`` dropped), ``\\dfrac`` -> ``\\frac``,
degree signs, ``\\%`` and dollar signs, and a trailing period. Units written as ``\\text{ cm}`` are
dropped by math-verify itself; ``\\text{5 cm}`` (number and unit in one text command) is first
rewritten to ``5\\text{ cm}``.

A ground truth that is a raw GSM8K reference (``"<worked solution> #### 42"``) stands for the number
after ``####``.

No box: 0.0, except for GSM8K-style numeric ground truths when the numeric fallback applies (by
default for data sources whose name contains ``gsm8k`` and for raw GSM8K references): then the last
number in the response is compared exactly. An unbalanced last box (truncated response) scores 0.0.

The function never raises: malformed input, non-string input, timeouts -> 0.0.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, Optional

try:  # absolute imports so the grading worker processes can import the same module by name
    from verl_ext.rewards import math_grader
    from verl_ext.rewards.extraction import (
        gsm8k_final_answer,
        last_boxed_content,
        last_number,
        parse_number,
        strip_math_delimiters,
    )
except ImportError:  # loaded by file path (verl's ``custom_reward_function.path``) without the package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    from verl_ext.rewards import math_grader
    from verl_ext.rewards.extraction import (
        gsm8k_final_answer,
        last_boxed_content,
        last_number,
        parse_number,
        strip_math_delimiters,
    )

__all__ = ["compute_score", "score_answer", "normalize_answer", "extract_prediction"]

#: Longest boxed answer that is graded at all (longer ones score 0; real answers are short).
DEFAULT_MAX_ANSWER_CHARS = 1000

# LaTeX spacing commands, tokenised left to right so that the row separator ``\\`` (and its
# optional spacing argument, ``\\[2pt]``) is matched as ONE token and kept: a plain ``\\[ ,;:!>]``
# pattern would eat the second backslash of ``\\ `` and merge the rows of a matrix.
_SPACING_RE = re.compile(
    r"(?P<row>\\\\)(?:\[\s*-?[\d.]+\s*(?:pt|em|ex|mm|cm|in|bp|mu)\s*\])?"
    r"|\\[!,;:> ]|\\q?quad\b|~"
)
# A number and its unit wrapped in one text command, ``\text{5 cm}``: rewritten to
# ``5\text{ cm}``, the form whose unit math-verify drops.
_TEXT_NUMBER_UNIT_RE = re.compile(
    r"\\(?:text|textrm|mathrm|mbox)\s*\{\s*"
    r"(?P<num>[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+)"
    r"\s*(?P<unit>[A-Za-z]+(?:\s+[A-Za-z]+)*)\s*\}"
)
_TEXT_WRAP_RE = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")


def _spacing_repl(m: "re.Match[str]") -> str:
    return "\\\\" if m.group("row") else " "


def normalize_answer(s: str) -> str:
    """Light, semantics-preserving clean-up applied before grading (see module docstring)."""
    s = strip_math_delimiters(s)
    s = s.replace("\\displaystyle", "")
    s = re.sub(r"\\(?:left|right)\.", "", s)  # null delimiters
    s = re.sub(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])", "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _SPACING_RE.sub(_spacing_repl, s)
    s = _TEXT_NUMBER_UNIT_RE.sub(lambda m: m.group("num") + "\\text{ " + m.group("unit") + "}", s)
    # degrees
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![A-Za-z])|°|\\degree(?![A-Za-z])", "", s)
    # percent and currency signs
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace("\\$", "").replace("$", "")
    s = s.strip()
    if s.endswith(".") and not s.endswith("..."):
        s = s[:-1].rstrip()
    return s


def _canonical(s: str) -> str:
    """A stricter key for the exact-match shortcut: no whitespace, ``\\text{x}`` -> ``x``."""
    prev = None
    while prev != s:
        prev = s
        s = _TEXT_WRAP_RE.sub(r"\1", s)
    return re.sub(r"\s+", "", s)


def extract_prediction(solution_str: object) -> Optional[str]:
    """The graded answer: content of the last ``\\boxed{}`` (``None`` if absent or unbalanced)."""
    return last_boxed_content(_as_text(solution_str))


def _as_text(x: object) -> Optional[str]:
    if isinstance(x, str):
        return x
    if isinstance(x, bytes):
        return x.decode("utf-8", errors="replace")
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return str(x)
    return None


def _gold_list(ground_truth: object) -> list[str]:
    if isinstance(ground_truth, (list, tuple)):
        items = list(ground_truth)
    elif hasattr(ground_truth, "tolist") and not isinstance(ground_truth, (str, bytes)):
        try:
            items = ground_truth.tolist()
        except Exception:  # noqa: BLE001
            items = []
        if not isinstance(items, list):
            items = [items]
    else:
        items = [ground_truth]
    out = []
    for g in items:
        t = _as_text(g)
        if t is not None and "####" in t:
            # a raw GSM8K reference ("<worked solution> #### 42"): its final answer is the gold
            t = gsm8k_final_answer(t)
        if t is not None and t.strip():
            out.append(t)
    return out


def _is_gsm8k_reference(ground_truth: object) -> bool:
    items = ground_truth if isinstance(ground_truth, (list, tuple)) else [ground_truth]
    return any("####" in t for t in map(_as_text, items) if t is not None)


def score_answer(
    gold: str,
    pred: str,
    *,
    timeout_s: float = 5.0,
    mode: str = "auto",
    pool_size: int = 2,
    max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS,
) -> bool:
    """Whether the bare answer ``pred`` is equivalent to the bare ground truth ``gold``."""
    if not isinstance(gold, str) or not isinstance(pred, str):
        return False
    if len(pred) > max_answer_chars or len(gold) > max_answer_chars:
        return False
    g = normalize_answer(gold)
    p = normalize_answer(pred)
    if not g or not p:
        return False
    if _canonical(g) == _canonical(p):
        return True
    gn, pn = parse_number(g), parse_number(p)
    if gn is not None and pn is not None:
        return gn == pn
    return math_grader.answers_equivalent(g, p, timeout_s=timeout_s, mode=mode, pool_size=pool_size)


def _fallback_enabled(setting: object, data_source: object, gsm8k_reference: bool = False) -> bool:
    if isinstance(setting, bool):
        return setting
    s = str(setting).strip().lower()
    if s in ("always", "true", "1", "yes", "all"):
        return True
    if s in ("never", "false", "0", "no", "none", ""):
        return False
    # a substring of the data source name, "gsm8k" by default; a raw GSM8K reference ("... #### 42")
    # marks a GSM8K-style problem whatever the data source is called
    if s == "gsm8k" and gsm8k_reference:
        return True
    return isinstance(data_source, str) and s in data_source.lower()


def compute_score(
    data_source: Any = None,
    solution_str: Any = None,
    ground_truth: Any = None,
    extra_info: Optional[dict] = None,
    *,
    numeric_fallback: object = "gsm8k",
    timeout_s: float = 5.0,
    mode: str = "auto",
    pool_size: int = 2,
    max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS,
    **kwargs: Any,
) -> dict:
    """verl custom reward function: ``{"score": 0.0|1.0, "acc": 0.0|1.0, "pred": str}``.

    Args:
        data_source: ``row["data_source"]`` (selects the numeric fallback, see ``numeric_fallback``).
        solution_str: the decoded response.
        ground_truth: ``row["reward_model"]["ground_truth"]``; a list means "any of these".
        extra_info: ``row["extra_info"]`` (unused).
        numeric_fallback: when the response has no ``\\boxed{}`` and the ground truth is a plain
            number, compare the last number of the response instead. ``"gsm8k"`` (default): only
            for data sources whose name contains that substring (any substring works) and for
            ground truths that are raw GSM8K references (``... #### 42``);
            ``"always"``/True; ``"never"``/False.
        timeout_s: math-verify time limit per parse / comparison.
        mode: ``"auto"`` | ``"signal"`` | ``"subprocess"`` | ``"none"`` (see ``math_grader``).
        pool_size: grading processes for ``"subprocess"`` mode.
        max_answer_chars: longer boxed answers score 0.
        **kwargs: ignored (verl may pass ``reward_router_address`` etc.).
    """
    correct = False
    pred_out = ""
    try:
        text = _as_text(solution_str)
        golds = _gold_list(ground_truth)
        if text is not None and golds:
            pred = last_boxed_content(text)
            if pred is not None:
                pred_out = pred[:200]
                correct = any(
                    score_answer(
                        g,
                        pred,
                        timeout_s=float(timeout_s),
                        mode=str(mode),
                        pool_size=int(pool_size),
                        max_answer_chars=int(max_answer_chars),
                    )
                    for g in golds
                )
            elif not _has_box_command(text) and _fallback_enabled(
                numeric_fallback, data_source, _is_gsm8k_reference(ground_truth)
            ):
                num = last_number(text)
                if num is not None:
                    pred_out = num
                    pv = parse_number(num)
                    for g in golds:
                        gv = parse_number(normalize_answer(g))
                        if gv is not None and pv is not None and gv == pv:
                            correct = True
                            break
    except Exception:  # noqa: BLE001 - a reward function must never take the trainer down
        correct = False
    score = 1.0 if correct else 0.0
    return {"score": score, "acc": score, "pred": pred_out}


def _has_box_command(text: str) -> bool:
    return "\\boxed" in text or "\\fbox" in text
