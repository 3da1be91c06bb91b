"""benchmarks/bench_gpu.py in its small CPU mode: runs without verl/Ray/vLLM and prints sane tables."""

from __future__ import annotations

import os
import re
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
sys.argv = [{bench!r}, "--size", "tiny", "--device", "cpu", "--repeats", "1", "--threads", "1"]
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


def _row(out: str, label: str) -> list[str]:
    for line in out.splitlines():
        if line.startswith(label + " ") and re.match(r"\s*[\d.]", line[len(label):]):
            return line[len(label):].split()
    raise AssertionError(f"no row '{label}' in:\n{out}")


def test_no_verl_ray_or_vllm_on_the_import_path(bench_output):
    assert re.search(r"^FORBIDDEN_IMPORTS=$", bench_output, re.M), bench_output[-500:]


def test_time_and_memory_table(bench_output):
    passes = {label: float(_row(bench_output, label)[2]) for label in
              ("grpo", "sfpo K=3", "gxpo paper_text", "gxpo authors", "gxpo paper_text host_buffers")}
    assert passes == {"grpo": 1.0, "sfpo K=3": 4.0, "gxpo paper_text": 3.0, "gxpo authors": 3.0,
                      "gxpo paper_text host_buffers": 3.0}
    assert float(_row(bench_output, "grpo")[1]) == 1.0  # the ratio column is relative to GRPO
    # CPU: the rule's persistent device buffers in trainable-parameter copies (goal 2, 0 with host buffers)
    assert _row(bench_output, "gxpo paper_text")[4] == "2.00*"
    assert _row(bench_output, "gxpo authors")[4] == "2.00*"
    assert _row(bench_output, "gxpo paper_text host_buffers")[4] == "0.00*"
    assert "<=3.05x" in bench_output


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
