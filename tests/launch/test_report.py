"""launch.report on synthetic logs with known answers.

Scenario (model Llama3.2-3B, validation every 10 steps, 300 steps):
* GRPO: 1 BP/step, 60 s/step; math500 rises to its peak 0.40 at step 240, then falls.
  -> steps 240, 4.00 h, 240 BP to reach its own peak; final BP 300, final hours 5.0.
* GXPO K=5: 3 BP/step while active (updates 1..30), then 1; 150 s/step active, 60 s after;
  math500 first reaches 0.40 at step 60 -> 60 steps, (30*150+30*60)/3600 = 1.75 h,
  30*3+30 = 120 BP; speedups 4.00, 4/1.75, 2.00.
* SFPO K=3: 4 BP/step, 200 s/step; peaks at 0.39: never reaches GRPO's peak.
The three runs use the three text formats (verl file logger, launch-style run dir with two resumed
segments and a Hydra config, simple JSONL with a meta.json side file).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from launch import report
from launch.report import Options

from helpers.paths import FIXTURES_DIR, REPO_ROOT

FIXTURES = FIXTURES_DIR / "logs"
STEPS = 300
EVERY = 10
OFFSETS = {"math500": 0.0, "amc23": -0.25, "gsm8k": 0.30, "minerva_math": -0.28, "olympiadbench": -0.34}


def grpo_acc(s: int) -> float:
    if s == 240:
        return 0.40
    if s < 240:
        return 0.20 + 0.19 * s / 240  # < 0.39 before the peak
    return 0.40 - 0.02 * (s - 240) / 60


def gxpo_acc(s: int) -> float:
    if s == 60:
        return 0.40
    if s < 60:
        return 0.25 + 0.14 * s / 60  # < 0.39 before step 60
    return 0.40 + 0.05 * (s - 60) / 240


def sfpo_acc(s: int) -> float:
    return 0.20 + 0.19 * min(s, 150) / 150  # peak 0.39


def gxpo_bp(s: int) -> int:
    return 3 * min(s, 30) + max(s - 30, 0)


def _val(acc: float) -> dict:
    return {f"val-core/{ds}/acc/mean@16": acc + off for ds, off in OFFSETS.items()} | {
        f"val-core/{ds}/acc/mean@4": 0.0 for ds in OFFSETS  # a smaller N must be ignored
    }


def _rows(method: str, acc, bp, secs, extra=None):
    rows = [(0, _val(acc(0)))]
    for s in range(1, STEPS + 1):
        d = {"training/global_step": s, "timing_s/step": secs(s), f"{method}/backward_passes": bp(s),
             f"{method}/optimizer_steps": bp(s), "actor/pg_loss": 0.1}
        if extra:
            d.update(extra(s))
        if s % EVERY == 0:
            d.update(_val(acc(s)))
        rows.append((s, d))
    return rows


def make_logs(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    # 1) verl FileLogger format at its default place <root>/<project>/<experiment>.jsonl
    d = root / "verl_file" / "gxpo_paper"
    d.mkdir(parents=True)
    with open(d / "llama3.2-3b_grpo.jsonl", "w") as fh:
        for s, data in _rows("grpo", grpo_acc, lambda s: s, lambda s: 60.0):
            fh.write(json.dumps({"step": s, "data": data}) + "\n")
    # a generation dump next to it must be ignored
    with open(d / "generations.jsonl", "w") as fh:
        fh.write(json.dumps({"input": "1+1", "output": "2", "score": 1.0, "step": 10}) + "\n")

    # 2) launch.submit --log-dir layout: two resumed segments + Hydra config; neutral run name
    rd = root / "runs" / "run_b"
    (rd / "hydra" / "20260101-000000" / ".hydra").mkdir(parents=True)
    (rd / "hydra" / "20260101-000000" / ".hydra" / "config.yaml").write_text(
        "actor_rollout_ref:\n  model:\n    path: meta-llama/Llama-3.2-3B-Instruct\n"
        "  actor:\n    update_rule: gxpo\n    gxpo:\n      K: 5\n      alpha: 1.0\n"
        "data:\n  seed: 7\ntrainer:\n  experiment_name: run_b\n"
    )
    rows = _rows("gxpo", gxpo_acc, gxpo_bp, lambda s: 150.0 if s <= 30 else 60.0,
                 extra=lambda s: {"gxpo/active": 1.0 if s <= 30 else 0.0,
                                  "gxpo/shutoff_update": -1 if s <= 30 else 30})
    seg1 = [r for r in rows if r[0] <= 150]
    seg2 = [r for r in rows if r[0] >= 141]  # resumed from the step-140 checkpoint
    for name, seg in (("metrics-20260101-000000.jsonl", seg1), ("metrics-20260102-000000.jsonl", seg2)):
        with open(rd / name, "w") as fh:
            for s, data in seg:
                fh.write(json.dumps({"step": s, "data": data}) + "\n")
        # the first attempt died while writing: a truncated line
    with open(rd / "metrics-20260101-000000.jsonl", "a") as fh:
        fh.write('{"step": 151, "data": {"timing_s/st')

    # 3) simple JSONL + sidecar meta
    sd = root / "simple"
    sd.mkdir()
    with open(sd / "sfpo_llama.jsonl", "w") as fh:
        for s, data in _rows("sfpo", sfpo_acc, lambda s: 4 * s, lambda s: 200.0):
            fh.write(json.dumps({"step": s, **data}) + "\n")
    (sd / "sfpo_llama.meta.json").write_text(json.dumps({"model": "llama3.2-3b", "method": "sfpo", "K": 3}))
    return root


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    return make_logs(tmp_path_factory.mktemp("logs"))


@pytest.fixture(scope="module")
def rep(logs, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    with pytest.warns(UserWarning, match="skipped 1 malformed line"):  # the truncated line of run_b
        res = report.build_report([str(logs)], out, ["val-core/math500/acc/mean@16", "avg"], Options(),
                                  iso_bp=None, iso_hours=None)
    return res, out


def _row(df: pd.DataFrame, method: str) -> pd.Series:
    sub = df[df["Method"] == method]
    assert len(sub) == 1, df
    return sub.iloc[0]


def test_runs_and_metadata(rep):
    res, out = rep
    runs = {r.meta["method"]: r for r in res["runs"]}
    assert set(runs) == {"grpo", "gxpo", "sfpo"}, [r.name for r in res["runs"]]
    assert {r.meta["model_display"] for r in res["runs"]} == {"Llama3.2-3B"}
    g = runs["gxpo"]
    assert (g.meta["K"], g.meta["alpha"], g.meta["seed"]) == (5, 1.0, 7)
    assert "config.yaml" in g.meta_sources["method"]
    assert g.hist.index.max() == STEPS and len(g.paths) == 2  # both segments, merged
    assert runs["sfpo"].meta["K"] == 3 and runs["sfpo"].meta["alpha"] == 0.8  # the default alpha (docs/algorithm.md#sfpo)
    assert runs["grpo"].meta_sources["method"] == "run name"
    inv = pd.read_csv(out / "runs.csv")
    assert len(inv) == 3 and set(inv["bp_source"]) == {"logged"}


def test_table2_known_answers(rep):
    res, out = rep
    t2 = res["table2"]["val-core/math500/acc/mean@16"]
    grpo, gxpo, sfpo = _row(t2, "GRPO"), _row(t2, "GXPO"), _row(t2, "SFPO")
    assert grpo["Peak Acc."] == pytest.approx(0.40)
    assert (grpo["Steps to match GRPO"], grpo["BPs to match GRPO"]) == (240, 240)
    assert grpo["Hours to match GRPO"] == pytest.approx(4.0)
    assert grpo["Step speedup"] == grpo["Time speedup"] == grpo["BP speedup"] == pytest.approx(1.0)
    assert gxpo["Steps to match GRPO"] == 60
    assert gxpo["BPs to match GRPO"] == 120
    assert gxpo["Hours to match GRPO"] == pytest.approx(1.75)
    assert gxpo["Step speedup"] == pytest.approx(4.0)
    assert gxpo["Time speedup"] == pytest.approx(4.0 / 1.75)
    assert gxpo["BP speedup"] == pytest.approx(2.0)
    assert gxpo["Peak Acc."] == pytest.approx(0.45)
    assert not sfpo["reached"] and np.isnan(sfpo["Steps to match GRPO"]) and np.isnan(sfpo["BP speedup"])
    md = (out / "table2_math500_mean16.md").read_text()
    assert "| Llama3.2-3B | GRPO | – | 0.4000 | 240 | 1.00 | 4.00 h | 1.00 | 240 | 1.00 |" in md
    assert "|  | GXPO | 5 | 0.4500 | 60 | 4.00 | 1.75 h | 2.29 | 120 | 2.00 |" in md
    assert "n/r" in md
    # "avg" = mean of the five benchmarks = math500 + mean offset: same crossing steps
    t2a = res["table2"]["avg"]
    assert _row(t2a, "GXPO")["Steps to match GRPO"] == 60


def test_table1_final_values(rep):
    res, out = rep
    t1 = res["table1"]
    gx = _row(t1, "GXPO")
    assert gx["BP"] == 3 and _row(t1, "SFPO")["BP"] == 4 and _row(t1, "GRPO")["BP"] == 1
    assert gx["Math-500"] == pytest.approx(100 * gxpo_acc(300))
    assert gx["GSM8k"] == pytest.approx(100 * (gxpo_acc(300) + 0.30))
    assert gx["Avg."] == pytest.approx(100 * (gxpo_acc(300) + np.mean(list(OFFSETS.values()))))
    header = (out / "table1.md").read_text().splitlines()[0]
    assert header == "| Model | Method | K | BP | Step | Math-500 | AMC23 | GSM8k | Minerva | Olympiad | Avg. | seeds |"
    assert set(t1["Step"]) == {"300"}


def test_iso_budgets_and_interpolation(rep, logs, tmp_path):
    res, _ = rep
    iso = res["iso_bp"]  # budget: GRPO's final BP = 300
    assert set(iso["budget"]) == {300.0}
    assert _row(iso, "GRPO")["Math-500"] == pytest.approx(100 * grpo_acc(300))
    assert _row(iso, "GXPO")["Math-500"] == pytest.approx(100 * gxpo_acc(240))  # bp(240) = 300
    # SFPO: bp = 4 s -> 300 at step 75, between the evaluations at 70 and 80
    assert _row(iso, "SFPO")["Math-500"] == pytest.approx(100 * (sfpo_acc(70) + sfpo_acc(80)) / 2)
    ih = res["iso_hours"]  # GRPO's final hours = 300 * 60 s = 5 h
    assert set(ih["budget"]) == {5.0}
    # GXPO: 4500 s active + 60 s/step -> 5 h at step 255, between 250 and 260
    assert _row(ih, "GXPO")["Math-500"] == pytest.approx(100 * (gxpo_acc(250) + gxpo_acc(260)) / 2)
    assert _row(ih, "SFPO")["Math-500"] == pytest.approx(100 * sfpo_acc(90))  # 200 s/step -> step 90

    # explicit budgets and the 'previous' rule; 10000 BP is beyond every run: empty, no extrapolation
    with pytest.warns(UserWarning, match="malformed"):
        res2 = report.build_report([str(logs)], tmp_path, ["math500"], Options(interp="previous"),
                                   iso_bp=[95, 10000], iso_hours=[1.0], plots=False)
    iso2 = res2["iso_bp"]
    gx = iso2[iso2["Method"] == "GXPO"].set_index("budget")
    assert gx.loc[95.0, "Math-500"] == pytest.approx(100 * gxpo_acc(30))  # bp 90 at step 30, 100 at 40
    assert np.isnan(gx.loc[10000.0, "Math-500"]) and np.isnan(gx.loc[10000.0, "Avg."])
    lin = report.interp_at(np.array([90.0, 100.0]), np.array([gxpo_acc(30), gxpo_acc(40)]), 95)
    assert lin == pytest.approx((gxpo_acc(30) + gxpo_acc(40)) / 2)
    md = (tmp_path / "iso_bp.md").read_text()
    assert "BP=95 Math-500" in md and "BP=10000 Avg." in md


def test_plots_written(rep):
    res, out = rep
    pngs = sorted((out / "plots").glob("*.png"))
    names = {p.name for p in pngs}
    for m in ("math500_mean16", "avg"):
        for axis in ("step", "bp", "hours"):
            assert f"{m}_vs_{axis}.png" in names
    for p in pngs:
        assert p.stat().st_size > 5000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![" in (out / "report.md").read_text()


def test_nominal_backward_passes_without_logged_counter(tmp_path):
    rows = []
    for s in range(0, 21):
        d = {"timing_s/step": 10.0} if s else {}
        if s:
            d["gxpo/active"] = 1.0 if s <= 5 else 0.0
        if s % 5 == 0:
            d["val-core/math500/acc/mean@8"] = 0.1 + 0.01 * s
        rows.append({"step": s, **d})
    p = tmp_path / "qwen2.5-1.5b_gxpo_k3_a0.5_s2.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run,) = report.load_runs([p])
    assert (run.meta["model"], run.meta["method"], run.meta["K"], run.meta["alpha"], run.meta["seed"]) == \
        ("qwen2.5-1.5b", "gxpo", 3, 0.5, 2)
    bp, src = report.backward_passes(run)
    assert src == "nominal" and bp.loc[5] == 15 and bp.loc[20] == 30 and bp.loc[0] == 0
    c = report.curve(run, "math500", Options())
    assert list(c.index) == [0, 5, 10, 15, 20] and c.loc[20, "hours"] == pytest.approx(200 / 3600)


def test_seeds_are_averaged(tmp_path):
    for seed, shift in ((1, 0.0), (2, 0.1)):
        rows = [{"step": s, "grpo/backward_passes": s, "timing_s/step": 1.0,
                 "val-core/math500/acc/mean@4": 0.1 + shift + 0.001 * s} for s in range(0, 11)]
        (tmp_path / f"qwen2.5-3b_grpo_s{seed}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = report.build_report([tmp_path], tmp_path / "out", ["math500"], Options(benchmarks={"math500": "M"}),
                              plots=False)
    t1 = res["table1"]
    assert len(t1) == 1 and t1.iloc[0]["seeds"] == 2
    assert t1.iloc[0]["M"] == pytest.approx(100 * (0.1 + 0.05 + 0.01))


def test_fixture_samples_parse():
    """The hand-written samples of each format in tests/fixtures/logs."""
    runs = {r.name: r for r in report.load_runs([FIXTURES])}
    assert set(runs) >= {"llama3.2-3b_grpo", "gxpo_sample", "simple_sfpo"}, sorted(runs)
    assert runs["llama3.2-3b_grpo"].hist.loc[2, "val-core/math500/acc/mean@16"] == pytest.approx(0.31)
    assert runs["gxpo_sample"].meta["method"] == "gxpo" and runs["gxpo_sample"].meta["K"] == 10
    assert runs["simple_sfpo"].meta["K"] == 5


def test_cli(logs, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "launch.report", "--runs", str(logs), "--out", str(out),
                           "--metric", "val-core/math500/acc/mean@16", "--iso-bp", "108,204,300", "--no-plots"],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for f in ("table1.md", "table1.csv", "table2_math500_mean16.csv", "iso_bp.md", "iso_hours.csv", "report.md"):
        assert (out / f).stat().st_size > 0
    proc = subprocess.run([sys.executable, "-m", "launch.report", "--runs", str(tmp_path / "nope"), "--out",
                           str(out)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert proc.returncode == 2 and "no such file or directory" in proc.stderr


WANDB_SCRIPT = r"""
import sys, wandb
run = wandb.init(project="gxpo", name="wb_run", config={"actor_rollout_ref": {"actor": {
    "update_rule": "sfpo", "sfpo": {"K": 10, "alpha": 0.5}}, "model": {"path": "Qwen/Qwen2.5-7B-Instruct"}}})
for s in range(0, 6):
    d = {"timing_s/step": 30.0, "sfpo/backward_passes": 11 * s} if s else {}
    if s % 2 == 0:
        d["val-core/math500/acc/mean@16"] = 0.5 + 0.01 * s
    wandb.log(d, step=s)
wandb.finish()
"""


def test_wandb_offline_binary(tmp_path):
    pytest.importorskip("wandb")
    env = dict(os.environ, WANDB_MODE="offline", WANDB_DIR=str(tmp_path), WANDB_SILENT="true",
               WANDB_DISABLE_GIT="true")
    proc = subprocess.run([sys.executable, "-c", WANDB_SCRIPT], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    if proc.returncode != 0:
        pytest.skip(f"wandb offline run failed here: {proc.stderr[-500:]}")
    (run,) = report.load_runs([tmp_path])
    assert run.kind == "wandb" and run.name == "wb_run"
    assert (run.meta["method"], run.meta["K"], run.meta["alpha"], run.meta["model_display"]) == \
        ("sfpo", 10, 0.5, "Qwen2.5-7B")
    c = report.curve(run, "math500", Options())
    assert list(c.index) == [0, 2, 4]
    assert c.loc[4, "bp"] == 44 and c.loc[4, "hours"] == pytest.approx(120 / 3600)
    assert c.loc[4, "acc"] == pytest.approx(0.54)


# ------------------------------------------------------------------ Table 1: one step per run
def _write_run(path: Path, rows: list[dict], config: str | None = None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics-1.jsonl").write_text("".join(json.dumps({"step": r["step"], "data": r}) + "\n" for r in rows))
    if config is not None:
        (path / ".hydra").mkdir()
        (path / ".hydra" / "config.yaml").write_text(config)


BENCH2 = {"math500": "Math-500", "amc23": "AMC23"}


def _two_bench_rows(amc_until: int, last: int, peak_at: int | None = None) -> list[dict]:
    rows = []
    for s in range(0, last + 1, 10):
        d = {"step": s, "grpo/backward_passes": s, "timing_s/step": 1.0,
             "val-core/math500/acc/mean@4": 0.30 + 0.001 * s + (0.2 if s == peak_at else 0.0)}
        if s <= amc_until:
            d["val-core/amc23/acc/mean@4"] = 0.10 + 0.001 * s
        rows.append(d)
    return rows


CFG = "actor_rollout_ref:\n  model:\n    path: Qwen/Qwen2.5-1.5B-Instruct\n  actor:\n    update_rule: grpo\n" \
      "trainer:\n  total_training_steps: {total}\n"


def test_table1_takes_every_benchmark_from_one_step_and_flags_short_runs(tmp_path):
    # AMC23 was last evaluated at step 50, the rest at step 100: the row is read at step 50
    _write_run(tmp_path / "a", _two_bench_rows(amc_until=50, last=100), CFG.format(total=200))
    opts = Options(benchmarks=BENCH2)
    (row,) = report.table1_rows(report.load_runs([tmp_path]), at="final", opts=opts)
    assert row.steps == (50,) and row.total_steps == (200,) and row.complete is False
    assert row.accuracy["math500"] == pytest.approx(0.35) and row.accuracy["amc23"] == pytest.approx(0.15)
    assert row.avg == pytest.approx(0.25) and row.method == "grpo" and row.model == "Qwen2.5-1.5B"
    assert row.step_text == "50 (of 200: stopped early)"
    res = report.build_report([tmp_path], tmp_path / "out", ["math500"], opts, plots=False)
    t1 = res["table1"].iloc[0]
    assert t1["Step"] == "50 (of 200: stopped early)" and t1["Math-500"] == pytest.approx(35.0)
    assert not t1["complete"]
    assert "stopped early" in (tmp_path / "out" / "table1.md").read_text()
    notes = (tmp_path / "out" / "report.md").read_text()
    assert "does not say which step its Table 1 reports" in notes and "33.46" in notes


def test_table1_best_step_and_complete_runs(tmp_path):
    # the peak of the mean over both benchmarks is at step 30
    _write_run(tmp_path / "a", _two_bench_rows(amc_until=100, last=100, peak_at=30), CFG.format(total=100))
    opts = Options(benchmarks=BENCH2)
    runs = report.load_runs([tmp_path])
    (best,) = report.table1_rows(runs, at="best", opts=opts)
    assert best.steps == (30,) and best.accuracy["math500"] == pytest.approx(0.53) and best.complete is True
    (final,) = report.table1_rows(runs, at="final", opts=opts)
    assert final.steps == (100,) and final.step_text == "100"
    with pytest.raises(ValueError, match="table1 at="):
        report.table1_rows(runs, at="last", opts=opts)


def test_table1_without_a_configured_total_is_not_flagged_and_seeds_share_a_row(tmp_path):
    for seed, last in ((1, 100), (2, 90)):
        rows = _two_bench_rows(amc_until=100, last=last)
        p = tmp_path / f"qwen2.5-3b_grpo_s{seed}.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (row,) = report.table1_rows(report.load_runs([tmp_path]), opts=Options(benchmarks=BENCH2))
    assert row.seeds == 2 and sorted(row.steps) == [90, 100] and row.complete is None
    assert row.accuracy["math500"] == pytest.approx((0.40 + 0.39) / 2)
    assert row.step_text in ("100/90", "90/100")


def test_table2_rows_are_typed(rep):
    res, _ = rep
    rows = {r.method: r for r in report.table2_rows(res["groups"], "val-core/math500/acc/mean@16", Options())}
    assert rows["gxpo"].steps_to_match == 60 and rows["gxpo"].bp_speedup == pytest.approx(2.0)
    assert rows["grpo"].peak_acc == pytest.approx(0.40) and not rows["sfpo"].reached


# ----------------------------------------------------------------------- unbiased pass@k tables
def test_report_uses_the_unbiased_pass_at_k(tmp_path):
    rows = []
    for s in range(0, 31, 10):
        rows.append({"step": s, "grpo/backward_passes": s, "timing_s/step": 1.0,
                     "val-core/math500/acc/mean@16": 0.3, "val-core/math500/acc/pass@1": 0.3,
                     "val-core/math500/acc/pass@16": 0.6 + 0.01 * s, "val-core/math500/acc/pass@4": 0.5,
                     "val-core/math500/acc/best@16/mean": 0.45})
    p = tmp_path / "logs" / "qwen2.5-3b_grpo.jsonl"
    p.parent.mkdir()
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    opts = Options(benchmarks={"math500": "Math-500"})
    res = report.build_report([tmp_path / "logs"], tmp_path / "out", ["math500"], opts, plots=False)
    assert res["table1"].iloc[0]["Math-500"] == pytest.approx(30.0)  # pass@1 = mean@16
    tk = res["table1_pass"][16]
    assert tk.iloc[0]["Math-500"] == pytest.approx(90.0) and tk.iloc[0]["Step"] == "30"  # not best@16
    assert (tmp_path / "out" / "table1_pass16.md").exists()
    assert "pass@16 (%, unbiased estimator)" in (tmp_path / "out" / "report.md").read_text()
    run = res["runs"][0]
    assert report.resolve_metric(run.hist, "math500", stat="pass@4") == "val-core/math500/acc/pass@4"
    assert report.resolve_metric(run.hist, "math500", stat="pass") == "val-core/math500/acc/pass@16"
    assert report.resolve_metric(run.hist, "math500") == "val-core/math500/acc/mean@16"


# ------------------------------------------------------------------------------ readable plots
def test_plot_axes_name_the_metric_and_seed_bands(tmp_path):
    from matplotlib.collections import PolyCollection

    for seed, shift in ((1, 0.0), (2, 0.1)):
        rows = [{"step": s, "grpo/backward_passes": s, "timing_s/step": 1.0,
                 "val-core/math500/acc/mean@4": 0.1 + shift + 0.001 * s} for s in range(0, 11)]
        (tmp_path / f"qwen2.5-3b_grpo_s{seed}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    groups = report.group_runs(report.load_runs([tmp_path]))
    fig = report.make_figure(groups, "math500", Options(), "step")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "Math-500 pass@1 (%)" and ax.get_xlabel() == "Training steps"
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(10.0) and ys.max() == pytest.approx(21.0)  # min..max of the seeds
    assert "mean of 2 seeds" in ax.get_legend().get_texts()[0].get_text()
    assert report.make_figure(groups, "avg", Options(), "bp").axes[0].get_ylabel() == \
        "Average pass@1 over 5 benchmarks (%)"
    label = report.metric_label("val-core/amc23/acc/pass@16", Options())
    assert label == "AMC23 pass@16 (%)"
    assert report.metric_label("val-core/math500/acc/mean@16", Options()) == "Math-500 pass@1 (%, mean of 16 samples)"


def test_avg_is_over_exactly_the_configured_benchmarks_or_incomplete(tmp_path):
    """A run that logged two of the five benchmarks has no "avg" (it used to be their mean)."""
    _write_run(tmp_path / "a", _two_bench_rows(amc_until=100, last=100), CFG.format(total=100))
    runs = report.load_runs([tmp_path])
    (row,) = report.table1_rows(runs, at="final", opts=Options())  # the paper's five benchmarks
    assert row.accuracy["math500"] == pytest.approx(0.40) and np.isnan(row.avg)
    assert report.metric_series(runs[0], "avg", Options()).empty
    res = report.build_report([tmp_path], tmp_path / "out", ["avg"], Options(), plots=False)
    md = (tmp_path / "out" / "table1.md").read_text()
    assert "| incomplete |" in md and "mean over exactly these 5 benchmarks" in md
    assert np.isnan(res["table1"].iloc[0]["Avg."])
    # with exactly these two benchmarks configured, the average is theirs
    (row,) = report.table1_rows(runs, at="final", opts=Options(benchmarks=BENCH2))
    assert row.avg == pytest.approx((0.40 + 0.20) / 2)


# ------------------------------------------------------------------------------ statistics
def test_mean_ci95_is_the_student_t_interval():
    from launch.report.derive import mean_ci95, t975

    m, h = mean_ci95([1.0, 2.0, 3.0])  # sd 1, df 2: t = 4.303
    assert m == pytest.approx(2.0) and h == pytest.approx(4.303 / np.sqrt(3))
    assert mean_ci95([1.0, None, float("nan"), 3.0]) == pytest.approx((2.0, 12.706))  # sd sqrt(2), n 2
    m1, h1 = mean_ci95([0.5])
    assert m1 == 0.5 and np.isnan(h1)  # one seed: no interval
    assert all(np.isnan(v) for v in mean_ci95([]))
    assert t975(11) == pytest.approx(2.228) and t975(100) == pytest.approx(1.96) and np.isnan(t975(0))


def test_first_reach_is_the_first_point_at_the_threshold():
    from launch.report.derive import first_reach

    c = pd.DataFrame({"acc": [0.3, 0.5, 0.45, 0.6], "bp": [0.0, 6.0, 12.0, 18.0], "hours": [0.0, 0.1, 0.2, 0.3]},
                     index=[0, 2, 4, 6])
    assert first_reach(c, 0.45) == {"step": 2.0, "hours": 0.1, "bp": 6.0}
    assert first_reach(c, 0.6)["step"] == 6.0  # equal counts as reached
    assert first_reach(c, 0.61) is None and first_reach(c, float("nan")) is None
    assert first_reach(c.iloc[:0], 0.1) is None


def test_a_named_group_is_labelled_with_its_name(tmp_path):
    rows = [{"step": s, "grpo/backward_passes": s, "val-core/math500/acc/mean@4": 0.1 * s} for s in range(3)]
    (tmp_path / "qwen2.5-3b_grpo_s1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (g,) = report.group_runs(report.load_runs([tmp_path]))
    assert g.label() == "GRPO"
    assert report.Group(g.key, g.runs, name="grpo_lr1e-3").label() == "grpo_lr1e-3"
