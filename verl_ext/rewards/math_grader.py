"""Equivalence of two final-answer strings with math-verify, with timeouts that work in threads.

math-verify (0.9) bounds its sympy work with ``signal.alarm`` (``parse(..., parsing_timeout=s)``,
``verify(..., timeout_seconds=s)``). Signals only work on a process's main thread: called from any
other thread with a timeout set, math-verify raises ``ValueError``. verl's reward loop calls the
reward function through ``loop.run_in_executor(None, ...)``, i.e. on worker THREADS, so the grader
picks a strategy per call (``mode``):

``"auto"`` (default)
    main thread -> ``"signal"``; any other thread -> ``"subprocess"``.
``"signal"``
    math-verify's own alarm-based timeouts, in-process (main thread only; falls back to
    ``"subprocess"`` elsewhere).
``"subprocess"``
    the grading runs in a few long-lived helper processes (``python math_grader.py --serve``,
    on their main threads, so math-verify's soft timeouts work there) and the caller waits at most
    a hard deadline; a helper that misses it is killed and replaced, so even a grading stuck in C
    code (huge integer powers) cannot stall training. Costs about a second per helper to start.
``"none"``
    in-process, math-verify timeouts disabled (``parsing_timeout=None``, ``timeout_seconds=None``);
    answers that look explosive (power towers, huge exponents or factorials) are refused up front
    instead. Used automatically if the process pool cannot be started.

Every public function here returns a bool and never raises.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import queue
import re
import select
import subprocess
import sys
import threading
import time
from typing import Optional

__all__ = ["answers_equivalent", "verify_in_process", "looks_explosive", "shutdown_pool"]

logger = logging.getLogger(__name__)

# math-verify logs a WARNING for every timeout and when timeouts are disabled; keep the training
# log readable (errors still show).
logging.getLogger("math_verify").setLevel(logging.ERROR)

_MODES = ("auto", "signal", "subprocess", "none")


def _targets():
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    # LaTeX first (answers are LaTeX), plain expressions ("1/2", "0.5") as a fallback.
    return (LatexExtractionConfig(), ExprExtractionConfig())


def verify_in_process(gold: str, pred: str, timeout_s: Optional[float]) -> bool:
    """math-verify ``parse`` both sides (as ``\\boxed{...}``) and ``verify(gold, pred)``.

    ``timeout_s`` None disables math-verify's signal timeouts (required off the main thread).
    Exceptions (including timeouts) give False.
    """
    try:
        from math_verify import parse, verify

        t = None if timeout_s is None else max(1, int(math.ceil(timeout_s)))
        targets = _targets()
        gold_parsed = parse("\\boxed{" + gold + "}", targets, parsing_timeout=t)
        if not gold_parsed:
            return False
        pred_parsed = parse("\\boxed{" + pred + "}", targets, parsing_timeout=t)
        if not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=t))
    except BaseException as e:  # noqa: BLE001 - TimeoutException derives from BaseException in some versions
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        logger.debug("math-verify failed on gold=%r pred=%r: %r", gold[:80], pred[:80], e)
        return False


# --------------------------------------------------------------------------------------- guards
_TOWER_RE = re.compile(r"\^\s*\{[^{}]*\^|\^\s*\d+\s*\^|\*\*[^*]*\*\*")
_BIG_EXP_RE = re.compile(r"(?:\^|\*\*)\s*\{?\s*[-+]?\d{6,}")
_BIG_FACT_RE = re.compile(r"\d{5,}\s*!|\}\s*\)?\s*!")


def looks_explosive(s: str) -> bool:
    """Cheap screen for answers whose sympy evaluation could run for minutes.

    Power towers (``9^{9^{9}}``), exponents of 6+ digits, factorials of 5+ digit numbers or of
    brace/paren groups. Only used where no timeout can protect the grader (mode ``"none"``).
    """
    return bool(_TOWER_RE.search(s) or _BIG_EXP_RE.search(s) or _BIG_FACT_RE.search(s))


# ------------------------------------------------------------------------ grading processes
# Each grading process runs this very file as a script (``python math_grader.py --serve``): no
# multiprocessing machinery, so nothing re-imports the caller's ``__main__`` and the children need
# neither ``verl_ext`` on their path nor pickling. Protocol: one JSON request line
# ``[gold, pred, timeout_s]`` on stdin -> one reply line ``1``/``0`` on stdout; ``ready`` once at
# start-up after math-verify is imported. A process that misses its deadline is killed; the
# others keep serving.

_POOL_STARTUP_GRACE_S = 120.0


class _GraderProcess:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-u", os.path.abspath(__file__), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            errors="replace",
            close_fds=True,
        )
        self.ready = False

    def _readline(self, timeout: float) -> Optional[str]:
        r, _, _ = select.select([self.proc.stdout], [], [], max(0.0, timeout))
        if not r:
            return None
        line = self.proc.stdout.readline()
        if line == "":  # EOF: the process died
            raise EOFError("grader process exited")
        return line.strip()

    def ask(self, gold: str, pred: str, timeout_s: float, deadline: float) -> Optional[bool]:
        """The verdict, or None when ``deadline`` (seconds) passed first."""
        t_end = time.monotonic() + deadline
        if not self.ready:
            line = self._readline(_POOL_STARTUP_GRACE_S)
            if line != "ready":
                return None
            self.ready = True
            t_end = time.monotonic() + deadline
        # ASCII-only JSON: the helper may run under a non-UTF-8 locale
        self.proc.stdin.write(json.dumps([gold, pred, timeout_s], ensure_ascii=True) + "\n")
        self.proc.stdin.flush()
        line = self._readline(t_end - time.monotonic())
        if line is None:
            return None
        return line == "1"

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except Exception:  # noqa: BLE001
            pass


_idle: "queue.LifoQueue[_GraderProcess]" = queue.LifoQueue()
_all: "set[_GraderProcess]" = set()
_procs_lock = threading.Lock()
_spawn_broken = False  # processes cannot be started here -> mode "none"
_startup_failures = 0


def _acquire(pool_size: int) -> Optional[_GraderProcess]:
    global _spawn_broken
    try:
        return _idle.get_nowait()
    except queue.Empty:
        pass
    with _procs_lock:
        if not _spawn_broken and len(_all) < max(1, int(pool_size)):
            try:
                gp = _GraderProcess()
            except Exception as e:  # noqa: BLE001
                logger.warning("math reward: cannot start grading processes (%r); grading without timeouts", e)
                _spawn_broken = True
                return None
            _all.add(gp)
            return gp
        if _spawn_broken:
            return None
    # all busy: wait for one (bounded by the callers' own deadlines)
    try:
        return _idle.get(timeout=_POOL_STARTUP_GRACE_S + 60.0)
    except queue.Empty:
        return None


def _retire(gp: _GraderProcess) -> None:
    gp.kill()
    with _procs_lock:
        _all.discard(gp)


def shutdown_pool() -> None:
    """Stop all grading processes (they also exit on their own when this process goes away)."""
    with _procs_lock:
        procs = list(_all)
        _all.clear()
    while True:
        try:
            _idle.get_nowait()
        except queue.Empty:
            break
    for gp in procs:
        gp.kill()


atexit.register(shutdown_pool)


def _hard_deadline(timeout_s: float) -> float:
    """Seconds a caller waits for a grading process (math-verify times parse(gold), parse(pred)
    and each comparison separately, so a legitimate grading can take a few multiples of it)."""
    return 3.0 * max(1.0, float(timeout_s)) + 2.0


def _verify_subprocess(gold: str, pred: str, timeout_s: float, pool_size: int) -> bool:
    global _startup_failures, _spawn_broken
    gp = _acquire(pool_size)
    if gp is None:
        return _verify_none(gold, pred)
    deadline = _hard_deadline(timeout_s)
    try:
        verdict = gp.ask(gold, pred, timeout_s, deadline)
    except Exception as e:  # noqa: BLE001 - died, broken pipe, ...
        logger.debug("math reward: grading process failed: %r", e)
        _retire(gp)
        return False
    if verdict is None:
        if not gp.ready:
            _startup_failures += 1
            if _startup_failures >= 3:
                logger.warning("math reward: grading processes do not start; grading without timeouts")
                _spawn_broken = True
        else:
            logger.warning("math reward: grading exceeded %.0fs; restarting that grading process", deadline)
        _retire(gp)
        return False if gp.ready or not _spawn_broken else _verify_none(gold, pred)
    _idle.put(gp)
    return verdict


def _serve() -> None:
    """Grading process main loop (runs on its main thread, so math-verify's alarms work)."""
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    import math_verify  # noqa: F401

    # warm sympy's lazily imported simplification paths so the first real request is not slow
    verify_in_process("x^2+2x+1", "(x+1)^2", None)
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        try:
            gold, pred, timeout_s = json.loads(line)
            ok = verify_in_process(str(gold), str(pred), float(timeout_s))
        except Exception:  # noqa: BLE001
            ok = False
        out.write("1\n" if ok else "0\n")
        out.flush()


def _verify_none(gold: str, pred: str) -> bool:
    if looks_explosive(gold) or looks_explosive(pred):
        return False
    return verify_in_process(gold, pred, None)


def answers_equivalent(
    gold: str,
    pred: str,
    *,
    timeout_s: float = 5.0,
    mode: str = "auto",
    pool_size: int = 2,
) -> bool:
    """True when math-verify judges ``pred`` equal to ``gold`` (both bare answers, no ``\\boxed``).

    See the module docstring for ``mode``. Never raises.
    """
    try:
        if not isinstance(gold, str) or not isinstance(pred, str):
            return False
        if mode not in _MODES:
            mode = "auto"
        on_main = threading.current_thread() is threading.main_thread()
        if mode == "auto":
            mode = "signal" if on_main else "subprocess"
        if mode == "signal":
            if on_main:
                return verify_in_process(gold, pred, timeout_s)
            mode = "subprocess"
        if mode == "subprocess":
            return _verify_subprocess(gold, pred, timeout_s, pool_size)
        return _verify_none(gold, pred)
    except Exception as e:  # noqa: BLE001
        logger.debug("math reward: grading error %r", e)
        return False


if __name__ == "__main__" and "--serve" in sys.argv[1:]:
    _serve()
