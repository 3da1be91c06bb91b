"""The GXPO math data: Hendrycks MATH Level 3-5 (train) and five evaluation sets, as verl rows.

"MATH Level 3-5" here is, by default, the lighteval copy's TRAIN split filtered to levels 3-5
(about 5.6k problems), as in the authors' paper-protocol data script; ``train_set="math_train_test"``
gives the other common set (train + test, levels 3-5, minus MATH-500: about 8.5k). See
:data:`TRAIN_SETS`.

Paper (Sec. 3.1): "Training uses the Hendrycks MATH Level 3-5 split. Evaluation is conducted on
Math-500, AMC23, GSM8K, Minerva Math, and OlympiadBench." It names no hub copies; we use these
well-known public ones (all widely used by RLVR evaluation code; override with ``hub_id=``):

=============  ====================================  =========  ======  ==========================
set            hub repo id                           config     split   fields read
=============  ====================================  =========  ======  ==========================
train          DigitalLearningGmbH/MATH-lighteval    default    train   problem, level ("Level 3"),
                                                                        type, solution (answer =
                                                                        last ``\\boxed{}``)
math500        HuggingFaceH4/MATH-500                --         test    problem, answer, subject,
                                                                        level (int), unique_id
amc23          math-ai/amc23                         --         test    id, question, answer
                                                                        (number or string)
gsm8k          openai/gsm8k                          main       test    question, answer
                                                                        ("... #### 72")
minerva        math-ai/minervamath                   --         test    question, answer
olympiadbench  math-ai/olympiadbench                 --         test    id, question,
                                                                        final_answer (list of
                                                                        ``$...$`` strings),
                                                                        context (optional)
=============  ====================================  =========  ======  ==========================

Why these: ``DigitalLearningGmbH/MATH-lighteval`` is the 7,500-problem MATH training split with
its ``level``/``type`` columns in one config (the copy verl's own MATH example and
``default_compute_score`` name); MATH-500 (the PRM800K test subset, disjoint from the MATH training
split) is the ``HuggingFaceH4`` copy; ``openai/gsm8k`` is the official GSM8K; ``math-ai/amc23``
(40 AMC 2023 problems), ``math-ai/minervamath`` (272) and ``math-ai/olympiadbench`` (674-675
text-only English math problems) are the copies used by most recent RLVR papers' evaluation code.

The converters are tolerant to the usual alternative field names (``problem``/``question``,
``answer``/``final_answer``/a ``solution`` with a box), so other copies of the same sets work too.

Each converter takes the loaded rows (any iterable of dicts: a ``datasets.Dataset``, a list read
from json/jsonl/parquet) and returns verl rows (:func:`verl_ext.data.rows.make_row`):

* ``data_source``: :data:`DATA_SOURCES` (stable names; validation metrics are keyed by them);
* ``prompt``: :func:`verl_ext.data.prompts.make_math_messages` in the chosen style (default
  ``authors``: the authors' scripts' training prompt for ``train``, their evaluation prompt for the
  five evaluation sets);
* ``ability``: ``"math"``; ``reward_model``: ``{"style": "rule", "ground_truth": <answer>}``;
* ``extra_info``: ``split``, ``index`` (row position in the output), original ``id``, ``level``,
  ``type`` where the source has them, and the raw ``question``.

Rows whose ground truth cannot be extracted are dropped (counted in the returned stats).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from verl_ext.data.prompts import DEFAULT_PROMPT_STYLE, PROMPT_STYLES, make_math_messages
from verl_ext.data.rows import make_row, write_rows
from verl_ext.rewards.extraction import gsm8k_final_answer, last_boxed_content, strip_math_delimiters

__all__ = [
    "ALL_SETS",
    "DATA_SOURCES",
    "HUB_SOURCES",
    "HubSource",
    "OUTPUT_FILES",
    "clean_answer",
    "parse_level",
    "convert_math_train",
    "convert_math500",
    "convert_amc23",
    "convert_gsm8k",
    "convert_minerva",
    "convert_olympiadbench",
    "CONVERTERS",
    "load_hub_rows",
    "load_local_rows",
    "build_set",
    "prepare",
]

logger = logging.getLogger(__name__)

#: Set names accepted by ``--sets`` (train first).
ALL_SETS = ("train", "math500", "amc23", "gsm8k", "minerva", "olympiadbench")

#: ``data_source`` written for each set.
DATA_SOURCES = {
    "train": "hendrycks_math",
    "math500": "math500",
    "amc23": "amc23",
    "gsm8k": "gsm8k",
    "minerva": "minerva_math",
    "olympiadbench": "olympiadbench",
}

#: Output file name per set under ``out_dir``.
OUTPUT_FILES = {name: f"{name}.parquet" for name in ALL_SETS}


@dataclass(frozen=True)
class HubSource:
    repo_id: str
    config: Optional[str]
    split: str


#: Which MATH problems make up the training set (``--train_set``):
#:
#: ``math_train`` (default; the paper preset's)
#:     the MATH training split (lighteval copy, 7,500 problems) filtered to levels 3-5: about 5.6k
#:     problems. This is what the authors' paper-protocol data script does
#:     (``prepare_gxpo_data.sh``: ``math_dataset.py --levels 3,4,5`` on ``MATH-lighteval``, train split).
#: ``math_train_test``
#:     training + test split (12,000) filtered to levels 3-5, minus the MATH-500 problems: about 8.5k
#:     problems, the other set commonly called "MATH level 3-5" (e.g. SimpleRL-Zoo's). Needs the
#:     MATH-500 set (to exclude it) and the lighteval test split (:data:`MATH_TEST_SOURCE`; local copy
#:     ``<source_dir>/math_test.jsonl`` or ``.json``/``.parquet``/a ``math_test/`` folder).
TRAIN_SETS = ("math_train", "math_train_test")
DEFAULT_TRAIN_SET = "math_train"

HUB_SOURCES = {
    "train": HubSource("DigitalLearningGmbH/MATH-lighteval", "default", "train"),
    "math500": HubSource("HuggingFaceH4/MATH-500", None, "test"),
    "amc23": HubSource("math-ai/amc23", None, "test"),
    "gsm8k": HubSource("openai/gsm8k", "main", "test"),
    "minerva": HubSource("math-ai/minervamath", None, "test"),
    "olympiadbench": HubSource("math-ai/olympiadbench", None, "test"),
}

#: The MATH test split (lighteval copy, 5,000 problems), read only for ``train_set="math_train_test"``.
MATH_TEST_SOURCE = HubSource("DigitalLearningGmbH/MATH-lighteval", "default", "test")
MATH_TEST_LOCAL_NAME = "math_test"


# ------------------------------------------------------------------------------------ helpers
def _first(row: dict, keys: Iterable[str]):
    for k in keys:
        v = row.get(k)
        if v is None:
            continue
        if isinstance(v, str) and not v.strip():
            continue
        return v
    return None


def clean_answer(ans: object) -> Optional[str]:
    """A ground-truth string from a source's answer field.

    Numbers: integral floats lose their ``.0`` (AMC ``27.0`` -> ``"27"``). Lists (OlympiadBench
    ``final_answer``) are joined with ``", "``. Strings lose their ``$`` math delimiters (an escaped
    ``\\$`` stays) and surrounding ``\\(...\\)``; a string that is itself a boxed answer is
    unboxed. Empty -> None.
    """
    if ans is None or isinstance(ans, bool):
        return None
    if isinstance(ans, int):
        return str(ans)
    if isinstance(ans, float):
        if ans != ans:  # NaN
            return None
        return str(int(ans)) if ans.is_integer() else repr(ans)
    if hasattr(ans, "tolist") and not isinstance(ans, (str, bytes)):
        ans = ans.tolist()
    if isinstance(ans, (list, tuple)):
        parts = [clean_answer(a) for a in ans]
        parts = [p for p in parts if p]
        return ", ".join(parts) if parts else None
    s = str(ans).strip()
    boxed = last_boxed_content(s)
    if boxed is not None and s.lstrip("$ ").startswith(("\\boxed", "\\fbox")):
        s = boxed
    s = strip_math_delimiters(s)
    # inner math delimiters of multi-part answers ("$3$, $5$" -> "3, 5"); "\$" (a dollar) stays
    s = re.sub(r"(?<!\\)\$", "", s).strip()
    return s or None


_LEVEL_RE = re.compile(r"(\d+)")


def parse_level(level: object) -> Optional[int]:
    """``"Level 3"`` / ``3`` / ``"3"`` -> 3; ``"Level ?"`` / None -> None."""
    if isinstance(level, bool) or level is None:
        return None
    if isinstance(level, int):
        return level
    m = _LEVEL_RE.search(str(level))
    return int(m.group(1)) if m else None


def _rows_to_list(rows: Iterable[dict]) -> list[dict]:
    return [dict(r) for r in rows]


def _finish(
    items: list[tuple[str, str, dict]], set_name: str, split: str, stats: Optional[dict], prompt: str
) -> list[dict]:
    """(question, ground truth, meta) triples -> verl rows with consecutive ``index``, the prompt in
    style ``prompt`` (:mod:`verl_ext.data.prompts`)."""
    out = []
    for question, gt, meta in items:
        out.append(
            make_row(
                data_source=DATA_SOURCES[set_name],
                messages=make_math_messages(question, prompt, split),
                ground_truth=gt,
                split=split,
                index=len(out),
                question=question,
                id=meta.get("id", ""),
                level=meta.get("level", ""),
                type=meta.get("type", ""),
            )
        )
    if stats is not None:
        stats["kept"] = len(out)
    return out


def _bump(stats: Optional[dict], key: str) -> None:
    if stats is not None:
        stats[key] = stats.get(key, 0) + 1


# --------------------------------------------------------------------------------- converters
def problem_key(text: object) -> str:
    """Whitespace-insensitive key of a problem statement (to match MATH-500 problems in MATH)."""
    return re.sub(r"\s+", "", str(text or ""))


def convert_math_train(
    rows: Iterable[dict],
    levels: Iterable[int] = (3, 4, 5),
    stats: Optional[dict] = None,
    prompt: str = DEFAULT_PROMPT_STYLE,
    exclude_problems: Optional[Iterable[str]] = None,
) -> list[dict]:
    """Hendrycks MATH rows -> verl training rows, keeping only ``levels`` (default Level 3-5).

    Fields: ``problem``, ``level`` ("Level N"), ``type``, ``solution``; the ground truth is the last
    ``\\boxed{}`` of the solution (an ``answer`` field wins when present). Problems whose
    :func:`problem_key` is in ``exclude_problems`` are dropped (counted as ``excluded``).
    """
    keep = {int(x) for x in levels}
    excluded = {problem_key(p) for p in (exclude_problems or ())}
    items = []
    for i, r in enumerate(_rows_to_list(rows)):
        lvl = parse_level(r.get("level"))
        if lvl is None or lvl not in keep:
            _bump(stats, "filtered_level")
            continue
        question = _first(r, ("problem", "question"))
        if excluded and problem_key(question) in excluded:
            _bump(stats, "excluded")
            continue
        gt = clean_answer(r.get("answer")) or clean_answer(last_boxed_content(r.get("solution")))
        if not question or not gt:
            _bump(stats, "no_answer")
            continue
        rid = _first(r, ("unique_id", "id", "idx"))
        items.append(
            (
                str(question),
                gt,
                {"id": rid if rid is not None else f"train-{i}", "level": r.get("level"), "type": r.get("type")},
            )
        )
    return _finish(items, "train", "train", stats, prompt)


def convert_math500(
    rows: Iterable[dict], stats: Optional[dict] = None, prompt: str = DEFAULT_PROMPT_STYLE
) -> list[dict]:
    """MATH-500 rows (``problem``, ``answer``, ``subject``, ``level``, ``unique_id``) -> verl rows."""
    items = []
    for i, r in enumerate(_rows_to_list(rows)):
        question = _first(r, ("problem", "question"))
        gt = clean_answer(r.get("answer")) or clean_answer(last_boxed_content(r.get("solution")))
        if not question or not gt:
            _bump(stats, "no_answer")
            continue
        rid = _first(r, ("unique_id", "id"))
        items.append(
            (
                str(question),
                gt,
                {
                    "id": rid if rid is not None else f"math500-{i}",
                    "level": r.get("level"),
                    "type": _first(r, ("subject", "type")),
                },
            )
        )
    return _finish(items, "math500", "test", stats, prompt)


def convert_amc23(
    rows: Iterable[dict], stats: Optional[dict] = None, prompt: str = DEFAULT_PROMPT_STYLE
) -> list[dict]:
    """AMC23 rows (``question``, ``answer`` number or string, ``id``) -> verl rows."""
    items = []
    for i, r in enumerate(_rows_to_list(rows)):
        question = _first(r, ("question", "problem"))
        gt = clean_answer(r.get("answer")) or clean_answer(last_boxed_content(r.get("solution")))
        if not question or not gt:
            _bump(stats, "no_answer")
            continue
        rid = r.get("id")
        items.append((str(question), gt, {"id": rid if rid is not None else f"amc23-{i}"}))
    return _finish(items, "amc23", "test", stats, prompt)


def convert_gsm8k(
    rows: Iterable[dict], stats: Optional[dict] = None, prompt: str = DEFAULT_PROMPT_STYLE
) -> list[dict]:
    """GSM8K rows (``question``, ``answer`` ending in ``#### N``) -> verl rows; ground truth N."""
    items = []
    for i, r in enumerate(_rows_to_list(rows)):
        question = _first(r, ("question", "problem"))
        gt = gsm8k_final_answer(r.get("answer"))
        if not question or not gt:
            _bump(stats, "no_answer")
            continue
        rid = r.get("id")
        items.append((str(question), gt, {"id": rid if rid is not None else f"gsm8k-test-{i}"}))
    return _finish(items, "gsm8k", "test", stats, prompt)


def convert_minerva(
    rows: Iterable[dict], stats: Optional[dict] = None, prompt: str = DEFAULT_PROMPT_STYLE
) -> list[dict]:
    """Minerva Math rows (``question``, ``answer``; or ``problem`` + boxed ``solution``) -> rows."""
    items = []
    for i, r in enumerate(_rows_to_list(rows)):
        question = _first(r, ("question", "problem"))
        gt = clean_answer(_first(r, ("answer", "final_answer"))) or clean_answer(last_boxed_content(r.get("solution")))
        if not question or not gt:
            _bump(stats, "no_answer")
            continue
        rid = _first(r, ("id", "idx", "unique_id"))
        items.append(
            (
                str(question),
                gt,
                {"id": rid if rid is not None else f"minerva-{i}", "type": _first(r, ("type", "subject"))},
            )
        )
    return _finish(items, "minerva", "test", stats, prompt)


def convert_olympiadbench(
    rows: Iterable[dict], stats: Optional[dict] = None, prompt: str = DEFAULT_PROMPT_STYLE
) -> list[dict]:
    """OlympiadBench rows (``question``, ``final_answer`` list, optional ``context``) -> rows.

    A non-empty ``context`` is prepended to the question; multi-part answers are joined by
    ``", "``. Rows that need images (``modality`` other than text-only, when present) are dropped.
    """
    items = []
    for i, r in enumerate(_rows_to_list(rows)):
        modality = r.get("modality")
        if isinstance(modality, str) and modality and "text" not in modality.lower():
            _bump(stats, "filtered_modality")
            continue
        question = _first(r, ("question", "problem"))
        context = r.get("context")
        if question and isinstance(context, str) and context.strip():
            question = context.strip() + "\n\n" + str(question).strip()
        gt = clean_answer(_first(r, ("final_answer", "answer"))) or clean_answer(
            last_boxed_content(r.get("solution") if isinstance(r.get("solution"), str) else None)
        )
        if not question or not gt:
            _bump(stats, "no_answer")
            continue
        rid = r.get("id")
        items.append(
            (
                str(question),
                gt,
                {
                    "id": rid if rid is not None else f"olympiadbench-{i}",
                    "type": _first(r, ("subfield", "subject", "type")),
                },
            )
        )
    return _finish(items, "olympiadbench", "test", stats, prompt)


CONVERTERS: dict[str, Callable[..., list[dict]]] = {
    "train": convert_math_train,
    "math500": convert_math500,
    "amc23": convert_amc23,
    "gsm8k": convert_gsm8k,
    "minerva": convert_minerva,
    "olympiadbench": convert_olympiadbench,
}


# ------------------------------------------------------------------------------------ loading
def load_hub_rows(set_name: str, hub_id: Optional[str] = None) -> list[dict]:
    """Rows of ``set_name`` (or ``"math_test"``) from the hub via ``datasets.load_dataset``."""
    import datasets  # lazy: slow import, and only this path needs it

    src = MATH_TEST_SOURCE if set_name == MATH_TEST_LOCAL_NAME else HUB_SOURCES[set_name]
    repo = hub_id or src.repo_id
    if src.config is not None:
        ds = datasets.load_dataset(repo, src.config, split=src.split)
    else:
        ds = datasets.load_dataset(repo, split=src.split)
    return [dict(r) for r in ds]


_LOCAL_EXTS = (".jsonl", ".json", ".parquet")


def _read_local_file(path: str) -> list[dict]:
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    if isinstance(data, dict):
        # {"data": [...]} / {"rows": [...]} / {"test": [...]} style wrappers
        for key in ("data", "rows", "test", "train", "examples"):
            if isinstance(data.get(key), list):
                return data[key]
        raise ValueError(f"{path}: a JSON object without a list of rows")
    return list(data)


def local_files_for(source_dir: str, set_name: str) -> list[str]:
    """Files holding ``set_name`` under ``source_dir``: ``<set>.{jsonl,json,parquet}`` or every such
    file inside a ``<set>/`` folder (sorted)."""
    files = [os.path.join(source_dir, set_name + ext) for ext in _LOCAL_EXTS]
    files = [f for f in files if os.path.isfile(f)]
    if files:
        return files[:1]
    folder = os.path.join(source_dir, set_name)
    if os.path.isdir(folder):
        found = []
        for ext in _LOCAL_EXTS:
            found.extend(glob.glob(os.path.join(folder, "**", "*" + ext), recursive=True))
        return sorted(found)
    return []


def load_local_rows(source_dir: str, set_name: str) -> list[dict]:
    """Rows of ``set_name`` from local copies (see :func:`local_files_for`); raises if none."""
    files = local_files_for(source_dir, set_name)
    if not files:
        raise FileNotFoundError(
            f"no local copy of {set_name!r} in {source_dir!r}: expected {set_name}.jsonl/.json/.parquet "
            f"or a folder {set_name}/ with such files"
        )
    rows: list[dict] = []
    for f in files:
        rows.extend(_read_local_file(f))
    return rows


def build_set(
    set_name: str,
    rows: Optional[Iterable[dict]] = None,
    source_dir: Optional[str] = None,
    hub_id: Optional[str] = None,
    stats: Optional[dict] = None,
    **converter_kwargs,
) -> list[dict]:
    """verl rows for ``set_name`` from ``rows``, else local copies in ``source_dir``, else the hub."""
    if set_name not in CONVERTERS:
        raise ValueError(f"unknown set {set_name!r}; choose from {', '.join(ALL_SETS)}")
    if rows is None:
        rows = load_local_rows(source_dir, set_name) if source_dir else load_hub_rows(set_name, hub_id)
    return CONVERTERS[set_name](rows, stats=stats, **converter_kwargs)


def _raw_rows(set_name: str, source_dir: Optional[str], hub_id: Optional[str]) -> list[dict]:
    return load_local_rows(source_dir, set_name) if source_dir else load_hub_rows(set_name, hub_id)


def prepare(
    out_dir: str,
    sets: Iterable[str] = ALL_SETS,
    source_dir: Optional[str] = None,
    hub_ids: Optional[dict] = None,
    train_levels: Iterable[int] = (3, 4, 5),
    prompt: str = DEFAULT_PROMPT_STYLE,
    train_set: str = DEFAULT_TRAIN_SET,
) -> dict[str, dict]:
    """Write ``<out_dir>/<set>.parquet`` for each set; returns ``{set: {"path", "rows", ...stats}}``.

    ``prompt``: a style of :mod:`verl_ext.data.prompts`; ``train_set``: one of :data:`TRAIN_SETS`.
    """
    if prompt not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {prompt!r}; choose from {', '.join(PROMPT_STYLES)}")
    if train_set not in TRAIN_SETS:
        raise ValueError(f"unknown train set {train_set!r}; choose from {', '.join(TRAIN_SETS)}")
    out_dir = os.path.expanduser(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    hub_ids = hub_ids or {}
    report: dict[str, dict] = {}
    for name in sets:
        stats: dict = {}
        kwargs: dict = {"prompt": prompt}
        raw = None
        if name == "train":
            kwargs["levels"] = tuple(train_levels)
            if train_set == "math_train_test":
                raw = _raw_rows("train", source_dir, hub_ids.get("train"))
                raw += _raw_rows(MATH_TEST_LOCAL_NAME, source_dir, hub_ids.get(MATH_TEST_LOCAL_NAME))
                math500 = _raw_rows("math500", source_dir, hub_ids.get("math500"))
                kwargs["exclude_problems"] = [_first(r, ("problem", "question")) for r in math500]
        rows = build_set(name, rows=raw, source_dir=source_dir, hub_id=hub_ids.get(name), stats=stats, **kwargs)
        if not rows:
            raise RuntimeError(f"set {name!r} produced no rows ({stats})")
        path = write_rows(rows, os.path.join(out_dir, OUTPUT_FILES[name]))
        report[name] = {"path": path, "rows": len(rows), **stats}
        logger.info("%s: %d rows -> %s (%s)", name, len(rows), path, stats)
    return report
