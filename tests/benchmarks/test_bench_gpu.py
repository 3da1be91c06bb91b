"""benchmarks/bench_gpu.py in its small CPU mode: runs without verl/Ray/vLLM and prints sane tables."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest
from helpers.proc_env import clean_env
from helpers.paths import REPO_ROOT

ROOT = str(REPO_ROOT)
BENCH = os.path.join(ROOT, "benchmarks", "bench_gpu.py")

# run the benchmark's main() in a fresh interpreter, then list the forbidden packages it imported
_DRIVER = """
import runpy, sys
sys.argv = [{bench!r}, "--size", "tiny", "--device", "cpu", "--repeats", "1", "--threads", "1",
            "--batch", "4,8"]
runpy.run_path({bench!r}, run_name="__main__")
bad = sorted({{m.split(".")[0] for m in sys.modules}} & {{"verl", "ray", "vllm", "sglang"}})
print("FORBIDDEN_IMPORTS=" + ",".join(bad))
"""


@pytest.fixture(scope="module")
def bench_output():
    env = clean_env(OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, "-c", _DRIVER.format(bench=BENCH)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout


def _rows(out: str, label: str) -> list[list[str]]:
    rows = [line[len(label):].split() for line in out.splitlines()
            if line.startswith(label + " ") and re.match(r"\s*[\d.]", line[len(label):])]
    assert rows, f"no row '{label}' in:\n{out}"
    return rows


def _row(out: str, label: str) -> list[str]:
    return _rows(out, label)[0]


def test_no_verl_ray_or_vllm_on_the_import_path(bench_output):
    assert re.search(r"^FORBIDDEN_IMPORTS=$", bench_output, re.M), bench_output[-500:]


LABELS = ("grpo", "sfpo K=3", "gxpo paper_text", "gxpo authors", "gxpo paper_text host_buffers")


def test_time_and_memory_table(bench_output):
    # columns after the label: tokens, s/update, x grpo, passes, peak GB, extra copies, syncs, goal
    passes = {label: float(_row(bench_output, label)[3]) for label in LABELS}
    assert passes == {"grpo": 1.0, "sfpo K=3": 4.0, "gxpo paper_text": 3.0, "gxpo authors": 3.0,
                      "gxpo paper_text host_buffers": 3.0}
    assert float(_row(bench_output, "grpo")[2]) == 1.0  # the ratio column is relative to GRPO
    # CPU: the rule's persistent device buffers in trainable-parameter copies (goal 2, 0 with host buffers)
    assert _row(bench_output, "gxpo paper_text")[5] == "2.00*"
    assert _row(bench_output, "gxpo authors")[5] == "2.00*"
    assert _row(bench_output, "gxpo paper_text host_buffers")[5] == "0.00*"
    assert "<=3.05x" in bench_output
    # host_buffers is judged on its own goal (relative to GXPO with device buffers), not on <=3.05x GRPO
    hb = " ".join(_row(bench_output, "gxpo paper_text host_buffers")[6:])
    assert "x gxpo, 0 copies" in hb and "3.05" not in hb


def test_sweep_of_tokens_per_update(bench_output):
    """--batch 4,8: one block per size (4 and 8 sequences of 48 tokens), every rule in each."""
    for label in LABELS:
        assert sorted(int(r[0]) for r in _rows(bench_output, label)) == [4 * 48, 8 * 48]


def test_host_syncs_per_update_are_counted_and_small(bench_output):
    for label in LABELS:
        for r in _rows(bench_output, label):
            assert 0 <= int(r[6]) <= 16, (label, r)
    assert all(int(r[6]) >= 1 for r in _rows(bench_output, "gxpo authors"))  # the rule's own reductions


@pytest.mark.parametrize("variant", ["paper_text", "authors"])
def test_low_precision_ratio_statistics_match_fp32(bench_output, variant):
    """fp16 (grad-scaled: the rule must unscale its g0 copy) and bf16 land near fp32.

    Tolerance: 0.03 absolute on the retention-ratio mean and the scale mean (a scaled g0 would
    give r ~ 1/65536, i.e. a difference of ~0.5 and s ~ 1).
    """
    rows = {}
    for line in bench_output.splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[0] == variant and parts[1] in ("fp32", "bf16", "fp16"):
            rows[parts[1]] = [float(x) for x in parts[2:] if not x.startswith("(") and not x.endswith(")")]
    assert set(rows) == {"fp32", "bf16", "fp16"}, bench_output[-2000:]
    ref = rows["fp32"]
    assert 0.05 < ref[0] < 1.5 and ref[2] > 1.0  # retention_ratio_mean, scale_mean: a real extrapolation
    for dname in ("bf16", "fp16"):
        assert abs(rows[dname][0] - ref[0]) < 0.03, (dname, rows[dname], ref)
        assert abs(rows[dname][2] - ref[2]) < 0.03, (dname, rows[dname], ref)


def test_gpu_check_script_runs_in_cpu_mode():
    """benchmarks/gpu_check.sh, the script a GPU machine runs, in its CPU mode: one table, sane rows."""
    env = clean_env(OMP_NUM_THREADS="1", PYTHONPATH=ROOT, DEVICE="cpu", SIZE="tiny", BATCH="4", REPEATS="1",
                    PYTHON=sys.executable, LIMIT="600")
    res = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), "--threads", "1"], env=env,
                         capture_output=True, text=True, timeout=650)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert float(_row(res.stdout, "gxpo paper_text")[3]) == 3.0
    assert "3. GXPO ratio statistics" in res.stdout


_KILLED_DRIVER = """
import importlib.util, os, signal
spec = importlib.util.spec_from_file_location("bench_gpu", {bench!r})
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
bench.precision_stats = lambda args: os.kill(os.getpid(), signal.SIGTERM)  # gpu_check.sh's time limit, here
bench.main(["--size", "tiny", "--device", "cpu", "--repeats", "1", "--threads", "1", "--batch", "4,8"])
"""


def test_a_run_cut_off_by_the_time_limit_keeps_the_rows_it_measured():
    """gpu_check.sh ends bench_gpu.py with SIGTERM at its limit: the batch sizes measured by then are on
    stdout (a pipe: block-buffered unless the script flushes each row), not lost with the process."""
    env = clean_env(OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    env.pop("PYTHONUNBUFFERED", None)  # as on a bare GPU machine
    res = subprocess.run([sys.executable, "-c", _KILLED_DRIVER.format(bench=BENCH)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == -signal.SIGTERM, (res.returncode, res.stderr[-3000:])
    for label in LABELS:
        assert sorted(int(r[0]) for r in _rows(res.stdout, label)) == [4 * 48, 8 * 48], res.stdout
    assert "3. GXPO ratio statistics" not in res.stdout
