"""Answer extraction shared by the data preparation and the reward functions.

Pure string code (no sympy, no math-verify) so that it is cheap, never hangs and can be imported
anywhere, including by ``verl_ext.data`` when it pulls ground truths out of reference solutions.

* :func:`last_boxed_content` -- the content of the LAST ``\\boxed{...}`` (or ``\\fbox{...}``) with
  nested braces matched; ``None`` when there is no box or the last one is unbalanced (a truncated
  response). Arguments without braces are accepted too: ``\\boxed 5`` (Hendrycks' convention:
  everything up to whitespace or ``$``) and ``\\boxed7`` / ``\\boxed\\pi`` (TeX's rule: one token).
* :func:`gsm8k_final_answer` -- the number after ``####`` in a GSM8K reference answer.
* :func:`last_number` -- the last plain number in a free-form response (GSM8K-style fallback).
* :func:`strip_math_delimiters` -- removes surrounding ``$...$`` / ``\\(...\\)`` / ``\\[...\\]``.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Optional

__all__ = [
    "BOX_COMMANDS",
    "last_boxed_content",
    "all_boxed_contents",
    "gsm8k_final_answer",
    "last_number",
    "parse_number",
    "strip_math_delimiters",
]

#: LaTeX commands treated as "the final-answer box".
BOX_COMMANDS = ("\\boxed", "\\fbox")

# A number as written in free text: optional sign, digits with optional thousands separators, optional
# decimal part; or a bare decimal like ".5".
_NUMBER_RE = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d])|(?<![\w.\d])[-+]?\.\d+")


_PLAIN_NUMBER_RE = re.compile(r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)")


# One TeX token: a control word (``\pi``), a control symbol (``\%``) or one plain character other
# than a brace, a math delimiter or whitespace.
_SINGLE_TOKEN_RE = re.compile(r"\\[A-Za-z]+|\\[^A-Za-z\s]|[^\s{}$\\]")


def _match_braces(text: str, open_idx: int) -> Optional[int]:
    """Index of the ``}`` closing the ``{`` at ``open_idx`` (escaped ``\\{`` / ``\\}`` are skipped)."""
    depth = 0
    i = open_idx
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2  # skip an escaped character such as \{ or \}
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _box_argument(text: str, cmd_end: int) -> Optional[str]:
    """The argument of a box command whose name ends at ``cmd_end`` (exclusive)."""
    i = cmd_end
    n = len(text)
    # "\boxedfoo" is another command, not a box.
    if i < n and text[i].isalpha():
        return None
    while i < n and text[i] in " \t":
        i += 1
    if i >= n:
        return None
    if text[i] == "{":
        close = _match_braces(text, i)
        if close is None:
            return None
        return text[i + 1 : close]
    if cmd_end < n and text[cmd_end] in " \t":
        # "\boxed 5" form: the argument runs up to whitespace / math delimiter.
        m = re.match(r"[^\s$]+", text[i:])
        if m:
            return m.group(0)
        return None
    # "\boxed7" / "\boxed\pi": TeX takes ONE token as the argument of a macro without braces --
    # a control sequence or a single character ("\boxed75" renders as a boxed 7 followed by 5).
    m = _SINGLE_TOKEN_RE.match(text, cmd_end)
    if m:
        return m.group(0)
    return None


def last_boxed_content(text: object) -> Optional[str]:
    """Content of the last ``\\boxed{...}``/``\\fbox{...}`` in ``text``, braces matched.

    Returns ``None`` when ``text`` is not a string, contains no box, or its LAST box is unbalanced
    (e.g. a response truncated at ``\\boxed{3``); an earlier complete box does not count then,
    because the final answer is the last one the model wrote.
    """
    if not isinstance(text, str):
        return None
    best = -1
    best_cmd = None
    for cmd in BOX_COMMANDS:
        pos = text.rfind(cmd)
        # rfind of "\boxed" may land on "\boxedfoo"; step back until a genuine box command is found.
        while pos != -1:
            end = pos + len(cmd)
            if end >= len(text) or not text[end].isalpha():
                break
            pos = text.rfind(cmd, 0, pos)
        if pos > best:
            best, best_cmd = pos, cmd
    if best < 0 or best_cmd is None:
        return None
    content = _box_argument(text, best + len(best_cmd))
    if content is None:
        return None
    return content.strip()


def all_boxed_contents(text: object) -> list[str]:
    """Contents of every complete box in ``text``, in order (diagnostics and tests)."""
    if not isinstance(text, str):
        return []
    out = []
    for m in re.finditer(r"\\(?:boxed|fbox)(?![A-Za-z])", text):
        arg = _box_argument(text, m.end())
        if arg is not None:
            out.append(arg.strip())
    return out


def strip_math_delimiters(s: str) -> str:
    """Remove surrounding ``$``/``$$``/``\\(\\)``/``\\[\\]`` and whitespace from an answer string."""
    s = s.strip()
    changed = True
    while changed and s:
        changed = False
        for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s = s[len(left) : len(s) - len(right)].strip()
                changed = True
                break
    return s


def gsm8k_final_answer(answer_field: object) -> Optional[str]:
    """The final answer of a GSM8K reference (``"... #### 1,234"`` -> ``"1234"``).

    Thousands separators and a trailing period are removed; returns ``None`` without ``####``.
    """
    if not isinstance(answer_field, str) or "####" not in answer_field:
        return None
    tail = answer_field.rsplit("####", 1)[1].strip()
    tail = tail.replace(",", "").replace("$", "").strip().rstrip(".").strip()
    return tail or None


def parse_number(token: object) -> Optional[Fraction]:
    """Exact value of a plain decimal number string (``"1,234.50"`` -> ``Fraction(2469, 2)``)."""
    if not isinstance(token, str):
        return None
    t = token.strip().replace("{,}", ",")
    t = t.replace("\\!", "").replace("\\$", "").lstrip("$").strip()
    if t.endswith("."):
        t = t[:-1]
    # commas only as thousands separators ("1,234" yes; "1,2" is a list, not 12)
    if not _PLAIN_NUMBER_RE.fullmatch(t):
        return None
    try:
        return Fraction(t.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def last_number(text: object, max_chars: int = 20000) -> Optional[str]:
    """The last number written in ``text`` (only its last ``max_chars`` characters are scanned)."""
    if not isinstance(text, str):
        return None
    tail = text[-max_chars:]
    last = None
    for m in _NUMBER_RE.finditer(tail):
        last = m.group(0)
    return last
