"""math-verify based reward: a table of tricky answers, malformed input, threads and timeouts."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from verl_ext.rewards import math_grader
from verl_ext.rewards.math_reward import compute_score, extract_prediction, normalize_answer

MATH = "math500"
GSM = "gsm8k"
GSM_REF = "She had 50 and gave away 8, so 50 - 8 = <<50-8=42>>42.\n#### 42"



def PM(*rows: str) -> str:
    """A pmatrix written with spaces around the row separator (Math-500's style)."""
    return "\\begin{pmatrix} " + " \\\\ ".join(rows) + " \\end{pmatrix}"


def PMC(*rows: str) -> str:
    """The same pmatrix written without any whitespace."""
    return "\\begin{pmatrix}" + "\\\\".join(r.replace(" ", "") for r in rows) + "\\end{pmatrix}"


# (ground truth, response, expected score)
CASES = [
    # fractions and decimals
    ("\\frac{1}{2}", "so $\\boxed{0.5}$", 1.0),
    ("\\frac{1}{2}", "\\boxed{1/2}", 1.0),
    ("0.5", "\\boxed{\\frac{1}{2}}", 1.0),
    ("\\frac{1}{2}", "\\boxed{\\dfrac{1}{2}}", 1.0),
    ("\\frac12", "\\boxed{\\tfrac{1}{2}}", 1.0),
    ("\\frac{3}{8}", "\\boxed{0.375}", 1.0),
    ("\\frac{1}{2}", "\\boxed{\\frac{1}{3}}", 0.0),
    # LaTeX variants
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3,\\frac{\\pi}{2})}", 1.0),
    ("(3,\\frac{\\pi}{2})", "\\boxed{\\left(3, \\dfrac{\\pi}{2}\\right)}", 1.0),
    ("10", "\\boxed{\\text{10}}", 1.0),
    ("\\text{Tuesday}", "\\boxed{\\text{Tuesday}}", 1.0),
    ("\\text{Tuesday}", "\\boxed{Tuesday}", 1.0),
    ("\\text{(C)}", "\\boxed{C}", 1.0),
    ("2\\sqrt{2}", "\\boxed{\\sqrt{8}}", 1.0),
    ("x^2+2x+1", "\\boxed{(x+1)^2}", 1.0),
    ("1000", "\\boxed{1,000}", 1.0),
    ("1000", "\\boxed{1{,}000}", 1.0),
    ("5", "\\boxed{ 5 }", 1.0),
    ("5", "\\boxed{$5$}", 1.0),
    ("-3", "\\boxed{-3}", 1.0),
    ("-3", "\\boxed{3}", 0.0),
    # units
    ("5", "\\boxed{5 \\text{ cm}}", 1.0),
    ("5", "\\boxed{5\\text{cm}}", 1.0),
    ("5", "\\boxed{6 \\text{ cm}}", 0.0),
    # degrees
    ("30", "\\boxed{30^\\circ}", 1.0),
    ("30", "\\boxed{30^{\\circ}}", 1.0),
    ("30^\\circ", "\\boxed{30}", 1.0),
    ("30", "\\boxed{60^\\circ}", 0.0),
    # percentages and money
    ("50\\%", "\\boxed{50}", 1.0),
    ("50", "\\boxed{50\\%}", 1.0),
    ("50", "\\boxed{40\\%}", 0.0),
    ("\\$18.90", "\\boxed{18.90}", 1.0),
    ("18.9", "\\boxed{\\$18.90}", 1.0),
    # intervals and sets
    ("(1,2]", "\\boxed{\\left(1, 2\\right]}", 1.0),
    ("(1,2]", "\\boxed{[1,2]}", 0.0),
    ("(-\\infty, 3]", "\\boxed{(-\\infty,3]}", 1.0),
    ("[2,\\infty)", "\\boxed{[2, \\infty)}", 1.0),
    ("\\{1,2\\}", "\\boxed{\\{2, 1\\}}", 1.0),
    ("3, 5", "\\boxed{5, 3}", 1.0),
    ("1,2", "\\boxed{12}", 0.0),  # a comma list is not a thousands separator
    ("1,2", "\\boxed{1, 2}", 1.0),
    # nested braces
    ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\frac{\\sqrt{3}}{2}}", 1.0),
    ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\dfrac{\\sqrt3}{2}}", 1.0),
    ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\frac{\\sqrt{2}}{2}}", 0.0),
    # several boxes: the last one counts
    ("3", "first \\boxed{2}, corrected: \\boxed{3}", 1.0),
    ("3", "first \\boxed{3}, corrected: \\boxed{2}", 0.0),
    ("3", "\\fbox{3}", 1.0),
    # no box: 0 outside GSM8K
    ("3", "The answer is 3.", 0.0),
    # malformed boxes
    ("\\frac{1}{2}", "\\boxed{\\frac{1}{2}", 0.0),
    ("2", "\\boxed{2} and then \\boxed{", 0.0),
    ("2", "\\boxed{}", 0.0),
    ("2", "\\boxed{{{{", 0.0),
    ("2", "}}}} \\boxed{2}", 1.0),
    ("1", "\\boxed{\\frac{1}{0}}", 0.0),
    ("1", "\\boxed{\\sqrt{-1}}", 0.0),
    # boxes without braces: TeX takes one token ("\\boxed75" is a boxed 7 followed by 5)
    ("7", "\\boxed7", 1.0),
    ("7", "so the answer is $\\boxed7$.", 1.0),
    ("7", "\\boxed7.", 1.0),
    ("7", "\\boxed8", 0.0),
    ("7", "\\boxed75", 1.0),
    ("75", "\\boxed75", 0.0),
    ("\\pi", "\\boxed\\pi", 1.0),
    ("5", "$\\boxed 5$", 1.0),
    # a number and its unit inside one text command
    ("5", "\\boxed{\\text{5 cm}}", 1.0),
    ("5", "\\boxed{\\text{6 cm}}", 0.0),
    ("5.5", "\\boxed{\\text{5.5 m}}", 1.0),
    ("5", "\\boxed{\\text{5 square units}}", 1.0),
    ("5", "\\boxed{\\text{5 cm}^2}", 1.0),
    ("1000", "\\boxed{\\text{1,000 dollars}}", 1.0),
    ("5", "\\boxed{\\text{five}}", 0.0),
    # matrices and vectors: whitespace around the row separator \\ does not matter, the entries do
    (PM("1", "2"), "\\boxed{" + PMC("1", "2") + "}", 1.0),
    (PMC("1", "2"), "\\boxed{" + PM("1", "2") + "}", 1.0),
    (PM("-1", "2", "3"), "\\boxed{" + PMC("-1", "2", "3") + "}", 1.0),
    (PM("1 & 2", "3 & 4"), "\\boxed{" + PMC("1&2", "3&4") + "}", 1.0),
    (PM("1", "2"), "\\boxed{\\begin{pmatrix} 1 \\\\[2pt] 2 \\end{pmatrix}}", 1.0),
    (PM("1", "2"), "\\boxed{\\begin{bmatrix}1\\\\2\\end{bmatrix}}", 1.0),
    (PM("\\sqrt{2}", "1"), "\\boxed{" + PMC("\\sqrt2", "1") + "}", 1.0),
    (PM("\\frac{1}{2}", "-\\frac{3}{4}"), "\\boxed{" + PMC("0.5", "-0.75") + "}", 1.0),
    (PM("0.5", "2"), "\\boxed{" + PMC("\\dfrac12", "2") + "}", 1.0),
    (PM("\\frac{1}{3}", "1"), "\\boxed{" + PMC("0.33", "1") + "}", 0.0),
    (PM("1 & 2", "3 & 4"), "\\boxed{" + PMC("3&4", "1&2") + "}", 0.0),  # rows swapped
    (PM("1", "2"), "\\boxed{" + PMC("2", "1") + "}", 0.0),
    (PM("1 & 2", "3 & 4"), "\\boxed{" + PMC("1&2", "3&5") + "}", 0.0),  # one wrong entry
    (PM("1", "2"), "\\boxed{" + PMC("1", "2", "3") + "}", 0.0),  # one row more
    (PM("1 & 2"), "\\boxed{" + PMC("1", "2") + "}", 0.0),  # row vs column vector
    (PM("1", "2"), "\\boxed{(1,2)}", 0.0),
]


@pytest.mark.parametrize("gt,response,expected", CASES)
def test_table(gt, response, expected):
    out = compute_score(MATH, response, gt)
    assert out["score"] == expected, (gt, response, out)
    assert out["acc"] == out["score"]
    assert set(out) == {"score", "acc", "pred"}


@pytest.mark.parametrize(
    "gt,response,data_source,kwargs,expected",
    [
        ("7", "So he has 7 apples.", GSM, {}, 1.0),
        ("1234", "Both cost $1,234.", GSM, {}, 1.0),
        ("2.5", "Half of 5 is 2.50", GSM, {}, 1.0),
        ("7", "So 7 apples, not 8", GSM, {}, 0.0),
        ("7", "#### 7", "openai/gsm8k", {}, 1.0),
        ("7", "He has 7.", MATH, {}, 0.0),
        ("7", "He has 7.", MATH, {"numeric_fallback": "always"}, 1.0),
        ("7", "He has 7.", MATH, {"numeric_fallback": True}, 1.0),
        ("7", "He has 7.", GSM, {"numeric_fallback": "never"}, 0.0),
        ("7", "He has 7.", GSM, {"numeric_fallback": False}, 0.0),
        ("7", "He has 7.", "my_gsm8k_copy", {}, 1.0),
        ("7", "\\boxed{8} though 7", GSM, {}, 0.0),  # a box wins over the fallback
        ("7", "\\boxed{7", GSM, {}, 0.0),  # unbalanced box: no fallback either
        ("\\frac{1}{2}", "so 1/2", GSM, {}, 0.0),  # fallback only for numeric ground truths
        ("7", "no number at all", GSM, {}, 0.0),
        ("7", "\\boxed{7}", GSM, {}, 1.0),
        # a raw GSM8K reference as the ground truth: its "#### <answer>" is the gold
        (GSM_REF, "So she has 42 left.", GSM, {}, 1.0),
        (GSM_REF, "So she has 42 left.", "unnamed_source", {}, 1.0),  # the reference marks GSM8K style
        (GSM_REF, "\\boxed{42}", MATH, {}, 1.0),
        (GSM_REF, "So she has 41 left.", GSM, {}, 0.0),
        (GSM_REF, "So she has 42 left.", GSM, {"numeric_fallback": "never"}, 0.0),
        ("Total: 1,234 + 0 #### 1,234", "It is 1234.", GSM, {}, 1.0),
    ],
)
def test_gsm8k_numeric_fallback(gt, response, data_source, kwargs, expected):
    assert compute_score(data_source, response, gt, **kwargs)["score"] == expected


@pytest.mark.parametrize(
    "response,gt",
    [
        (None, "2"),
        (12345, "2"),
        (["\\boxed{2}"], "2"),
        (object(), "2"),
        ("\\boxed{2}", None),
        ("\\boxed{2}", ""),
        ("\\boxed{2}", {"a": 1}),
        ("\\boxed{\\\\\\\\}", "\\"),
        ("\\boxed{\\left(}", "1"),
        ("\x00\xff\ud800 \\boxed{\x00}", "0"),
        ("\\boxed{" + "{" * 5000 + "}" * 5000 + "}", "1"),
        ("\\boxed{" + "1+" * 5000 + "1}", "5001"),  # longer than max_answer_chars: refused
        ("$$$\\boxed{$}$$", "1"),
    ],
)
def test_malformed_input_never_raises_and_scores_zero(response, gt):
    out = compute_score(MATH, response, gt)
    assert out["score"] == 0.0 and isinstance(out["pred"], str)


def test_bytes_ground_truth_lists_and_extra_kwargs():
    assert compute_score(MATH, b"\\boxed{2}", "2")["score"] == 1.0
    assert compute_score(MATH, "\\boxed{3}", ["2", "3"])["score"] == 1.0
    assert compute_score(MATH, "\\boxed{4}", ("2", "3"))["score"] == 0.0
    assert compute_score(MATH, "\\boxed{27}", 27)["score"] == 1.0
    # verl may pass extra keywords (reward router, tokenizer); they are ignored
    out = compute_score(
        data_source=MATH,
        solution_str="\\boxed{2}",
        ground_truth="2",
        extra_info={"index": 0},
        reward_router_address=None,
        reward_model_tokenizer=None,
    )
    assert out == {"score": 1.0, "acc": 1.0, "pred": "2"}


def test_huge_response_is_fast():
    response = "x" * 2_000_000 + " \\boxed{2}"
    t = time.monotonic()
    assert compute_score(MATH, response, "2")["score"] == 1.0
    assert compute_score(MATH, "y" * 2_000_000, "2")["score"] == 0.0
    assert compute_score(GSM, "9 " * 500_000, "2")["score"] == 0.0
    assert time.monotonic() - t < 5.0


def test_explosive_answer_times_out_on_the_main_thread():
    t = time.monotonic()
    assert compute_score(MATH, "\\boxed{9^{9^{9}}}", "1", timeout_s=1)["score"] == 0.0
    assert time.monotonic() - t < 10.0


def test_explosive_answers_refused_without_timeouts():
    assert math_grader.looks_explosive("9^{9^{9}}")
    assert math_grader.looks_explosive("2^{1000000}")
    assert math_grader.looks_explosive("(10^{10})!")
    assert not math_grader.looks_explosive("2^{10}")
    assert not math_grader.looks_explosive("\\frac{x^2}{3}")
    t = time.monotonic()
    assert compute_score(MATH, "\\boxed{9^{9^{9}}}", "1", mode="none")["score"] == 0.0
    assert time.monotonic() - t < 2.0
    assert compute_score(MATH, "\\boxed{(x+1)^2}", "x^2+2x+1", mode="none")["score"] == 1.0


def test_prediction_and_normalisation_helpers():
    assert extract_prediction("a \\boxed{1} b \\boxed{\\frac{2}{3}}") == "\\frac{2}{3}"
    assert extract_prediction(None) is None
    assert normalize_answer("$\\left( 1, 2 \\right]$") == "( 1, 2 ]"
    assert normalize_answer("30^{\\circ}") == "30"
    assert normalize_answer("50\\%") == "50"
    assert normalize_answer("\\$5.") == "5"
    assert normalize_answer("f \\circ g") == "f \\circ g"
    assert normalize_answer("x \\rightarrow y") == "x \\rightarrow y"
    # the row separator survives, spacing commands next to it go
    assert normalize_answer("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}") == "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"
    assert normalize_answer("1\\\\\\,2") == "1\\\\ 2"
    assert normalize_answer("1 \\\\[3pt] 2") == "1 \\\\ 2"
    assert normalize_answer("a\\ b") == "a b"
    assert normalize_answer("\\text{5 cm}") == "5\\text{ cm}"
    assert extract_prediction("\\boxed7") == "7"
    assert extract_prediction("\\boxed\\frac12") == "\\frac"  # one token, as TeX reads it
    assert extract_prediction("\\boxedfoo") is None


# Answers whose sympy evaluation would run for minutes or exhaust memory.
BOMBS = ["10^{10^{10}}", "(10^{100})!", "\\binom{10^{9}}{10^{8}}", "2^{3^{4^{5}}}"]


@pytest.mark.parametrize("bomb", BOMBS)
def test_every_answer_is_bounded_in_time_on_the_main_thread(bomb):
    t = time.monotonic()
    assert compute_score(MATH, "\\boxed{" + bomb + "}", "1", timeout_s=1)["score"] == 0.0
    assert compute_score(MATH, "\\boxed{" + PMC(bomb, "1") + "}", PM("1", "1"), timeout_s=1)["score"] == 0.0
    assert time.monotonic() - t < 30.0  # generous: math-verify stops each step after ~1 s here


def test_every_answer_is_bounded_in_time_on_worker_threads(fresh_grader_pool):
    """In verl's reward threads no signal can interrupt sympy; the grading process is killed instead."""
    with ThreadPoolExecutor(max_workers=2) as ex:
        t = time.monotonic()
        futs = [ex.submit(compute_score, MATH, "\\boxed{" + b + "}", "1", None, timeout_s=1) for b in BOMBS]
        assert [f.result(timeout=120)["score"] for f in futs] == [0.0] * len(BOMBS)
        # 4 answers on 2 threads, each bounded by the hard deadline (5 s at timeout_s=1) + a restart
        assert time.monotonic() - t < 60.0
        # and the pool still grades normally afterwards
        assert ex.submit(compute_score, MATH, "\\boxed{(x+1)^2}", "x^2+2x+1").result(timeout=120)["score"] == 1.0


# --------------------------------------------------------------------- threads (verl's reward loop)
THREAD_CASES = [
    ("\\frac{1}{2}", "\\boxed{0.5}", 1.0),
    ("x^2+2x+1", "\\boxed{(x+1)^2}", 1.0),
    ("2\\sqrt{2}", "\\boxed{\\sqrt{8}}", 1.0),
    ("(1,2]", "\\boxed{[1,2]}", 0.0),
    ("1", "\\boxed{9^{9^{9}}}", 0.0),
]


@pytest.fixture
def fresh_grader_pool():
    math_grader.shutdown_pool()
    yield
    math_grader.shutdown_pool()


def test_scores_from_worker_threads_match(fresh_grader_pool):
    """verl calls the reward in executor threads, where math-verify's signal timeouts cannot run."""
    with ThreadPoolExecutor(max_workers=3) as ex:
        futs = [ex.submit(compute_score, MATH, r, g, None, timeout_s=1) for g, r, _ in THREAD_CASES]
        results = [f.result(timeout=120) for f in futs]
    assert [r["score"] for r in results] == [e for _, _, e in THREAD_CASES]
    assert 1 <= len(math_grader._all) <= 2  # pool_size default 2


def test_a_stuck_grading_process_is_killed_and_replaced(fresh_grader_pool, monkeypatch):
    with ThreadPoolExecutor(max_workers=1) as ex:
        # warm one grading process
        assert ex.submit(compute_score, MATH, "\\boxed{(x+1)^2}", "x^2+2x+1").result(timeout=120)["score"] == 1.0
        (gp,) = list(math_grader._all)
        # pretend the hard deadline is tiny: the (slow) request overruns it and the process is killed
        monkeypatch.setattr(math_grader, "_hard_deadline", lambda timeout_s: 0.3)
        out = ex.submit(compute_score, MATH, "\\boxed{9^{9^{9}}}", "1", timeout_s=5).result(timeout=60)
        assert out["score"] == 0.0
        assert gp.proc.poll() is not None and gp not in math_grader._all
        monkeypatch.undo()
        # the next request gets a new process and grades normally
        assert ex.submit(compute_score, MATH, "\\boxed{(x+1)^2}", "x^2+2x+1").result(timeout=120)["score"] == 1.0
        assert len(math_grader._all) == 1 and list(math_grader._all)[0] is not gp


# ---------------------------------------------------------------------------- verl's loader
def test_loaded_through_verl_custom_reward_function_by_file_path():
    reward = pytest.importorskip("verl.trainer.ppo.reward")
    from omegaconf import OmegaConf

    import verl_ext.rewards.math_reward as mod

    cfg = OmegaConf.create(
        {
            "reward": {
                "custom_reward_function": {
                    "path": os.path.abspath(mod.__file__),
                    "name": "compute_score",
                    "reward_kwargs": {"numeric_fallback": "never"},
                }
            }
        }
    )
    fn = reward.get_custom_reward_fn(cfg)
    # exactly how verl's naive reward manager calls it (keywords only)
    out = fn(data_source="gsm8k", solution_str="He has 7.", ground_truth="7", extra_info={"index": 3})
    assert out == {"score": 0.0, "acc": 0.0, "pred": ""}  # reward_kwargs switched the fallback off
    out = fn(data_source="math500", solution_str="\\boxed{\\dfrac{1}{2}}", ground_truth="\\frac{1}{2}", extra_info={})
    assert out["score"] == 1.0


def test_loads_by_file_path_without_the_package_on_sys_path(tmp_path):
    """verl may load the file by path in a process where the project is not importable (not
    installed, another cwd): the module then puts its project root on sys.path itself."""
    import subprocess
    import sys

    import verl_ext.rewards.math_reward as mod

    code = (
        "import importlib.util, os, sys\n"
        "sys.meta_path = [f for f in sys.meta_path if '__editable__' not in getattr(f, '__module__', '')\n"
        "                 and '__editable__' not in getattr(type(f), '__module__', '')]\n"
        "sys.path = [p for p in sys.path if not os.path.isdir(os.path.join(p or '.', 'verl_ext'))]\n"
        "assert importlib.util.find_spec('verl_ext') is None\n"
        f"spec = importlib.util.spec_from_file_location('custom_module_x', {os.path.abspath(mod.__file__)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "out = m.compute_score(data_source='math500', solution_str='\\\\boxed{0.5}', ground_truth='\\\\frac{1}{2}')\n"
        "print(out['score'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "1.0"
