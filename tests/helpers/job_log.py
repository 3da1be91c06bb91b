"""What a failed end-to-end run's assertion shows: its first error, then its end.

A failed main job prints thousands of lines; its last lines are usually the driver's traceback of a
consequence (``EngineDeadError``, ``Received an empty list as keys``), the cause having been printed
by a worker much earlier. :func:`excerpt` keeps both.
"""

from __future__ import annotations

import re

_FIRST_ERROR = re.compile(r"Traceback \(most recent call last\)|\bERROR\b|Error: ")


def excerpt(log: str, head_lines: int = 60, tail_chars: int = 6000) -> str:
    lines = log.splitlines()
    first = next((i for i, line in enumerate(lines) if _FIRST_ERROR.search(line)), None)
    if first is None or len(log) <= tail_chars:
        return log[-tail_chars:]
    head = "\n".join(lines[first:first + head_lines])
    return f"--- first error (line {first + 1}) ---\n{head}\n--- last {tail_chars} characters ---\n{log[-tail_chars:]}"
