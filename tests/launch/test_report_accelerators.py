"""CAPO and NExt as extra rows of the report, on synthetic logs with known answers.

Scenario (Qwen2.5-7B, validation every 5 steps, 40 steps, 10 s/step unless said):
* GRPO (full parameters): acc 0.30 + 0.01 * step -> peak 0.70 at step 40.
* CAPO + GRPO: same curve + 0.1 -> reaches 0.70 at step 30 (1 BP/step: CAPO adds no pass).
* GRPO (LoRA r8): acc 0.20 + 0.005 * step -> peak 0.40 at step 40.
* NExt (LoRA r8): acc 0.20 + 0.01 * step -> reaches LoRA GRPO's 0.40 at step 20; its predictor took
  30 s at step 10 and 30 s at step 20 (inside ``timing_s/step``: 40 s at those steps), 2 events.
  Measured against full GRPO's 0.70 it would reach it only at step 50 (never): the LoRA reference is
  what makes it "reached".
The runs carry their metadata the three ways runs do: Hydra config, Hydra choices/overrides, name.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from launch import report, runmeta
from launch.report import Options

BENCH = {"math500": "Math-500"}


def _rows(acc, *, next_cost: bool = False) -> list[dict]:
    rows = []
    events = 0
    secs_total = 0.0
    for s in range(0, 41):
        d: dict = {"step": s}
        if s:
            d["grpo/backward_passes"] = s
            d["timing_s/step"] = 10.0
            if next_cost and s in (10, 20):
                events += 1
                secs_total += 30.0
                d["timing_s/step"] = 40.0
                d["next/predictor_seconds"] = 30.0
            if next_cost:
                d["next/events"] = events
                d["next/predictor_seconds_total"] = secs_total
        if s % 5 == 0:
            d["val-core/math500/acc/mean@4"] = acc(s)
        rows.append(d)
    return rows


def _config(lora: int = 0, capo: bool = False, nxt: bool = False) -> str:
    return ("gxpo_run:\n  model: qwen2.5-7b\n"
            f"actor_rollout_ref:\n  model:\n    path: Qwen/Qwen2.5-7B-Instruct\n    lora_rank: {lora}\n"
            f"  actor:\n    update_rule: grpo\n    capo:\n      enable: {str(capo).lower()}\n"
            f"    next:\n      enable: {str(nxt).lower()}\n"
            "data:\n  seed: 1\n")


def _write(path: Path, rows: list[dict], config: str | None = None, overrides: list[str] | None = None) -> None:
    path.mkdir(parents=True)
    (path / "metrics-1.jsonl").write_text("".join(json.dumps({"step": r["step"], "data": r}) + "\n" for r in rows))
    if config is not None or overrides is not None:
        (path / ".hydra").mkdir()
        if config is not None:
            (path / ".hydra" / "config.yaml").write_text(config)
        if overrides is not None:
            (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))


@pytest.fixture()
def runs_dir(tmp_path) -> Path:
    root = tmp_path / "runs"
    _write(root / "full_grpo", _rows(lambda s: 0.30 + 0.01 * s), _config())
    # CAPO: known from its Hydra overrides only (method=capo), model from the run name
    _write(root / "table1_qwen2.5-7b_capo_s1", _rows(lambda s: 0.40 + 0.01 * s),
           overrides=["experiment=paper_math", "base_model=qwen2.5-7b", "method=capo",
                      "actor_rollout_ref.model.lora_rank=0"])
    _write(root / "lora_grpo", _rows(lambda s: 0.20 + 0.005 * s), _config(lora=8))
    _write(root / "lora_next", _rows(lambda s: 0.20 + 0.01 * s, next_cost=True), _config(lora=8, nxt=True))
    return root


def test_runmeta_reads_the_accelerator_and_the_lora_rank():
    assert runmeta.parse_method_group("capo") == {"method": "grpo", "accel": "capo"}
    assert runmeta.parse_method_group("capo_gxpo_k5") == {"method": "gxpo", "accel": "capo", "K": 5}
    assert runmeta.parse_method_group("capo_gxpo_k5_a0.5") == {"method": "gxpo", "accel": "capo", "K": 5, "alpha": 0.5}
    assert runmeta.parse_method_group("next") == {"method": "grpo", "accel": "next"}
    assert runmeta.parse_method_group("nextgen") == {}
    meta = runmeta.merge_meta(runmeta.meta_from_overrides(
        ["method=capo", "actor_rollout_ref.actor.capo.enable=false", "actor_rollout_ref.model.lora_rank=16"]))
    assert meta.get("accel") is None and meta["lora"] == 16 and meta["method"] == "grpo"
    assert runmeta.meta_from_name("table1_qwen2.5-7b_capo_gxpo_k5_s2") == {
        "method": "gxpo", "K": 5, "seed": 2, "accel": "capo", "model": "qwen2.5-7b"}
    # a full config with every accelerator off wins over a name that says otherwise
    cfg = {"actor_rollout_ref": {"actor": {"update_rule": "grpo", "capo": {"enable": False}}, "model": {"lora_rank": 0}}}
    merged = runmeta.merge_meta(runmeta.meta_from_config(cfg), runmeta.meta_from_name("x_capo_s1"))
    assert "accel" not in merged and "lora" not in merged
    assert runmeta.method_title("gxpo", 5, "capo") == "CAPO+GXPO K=5"
    assert runmeta.method_title("grpo", None, "next") == "NExt (LoRA GRPO)"
    assert runmeta.method_title("grpo", None, None, 8) == "GRPO (LoRA r8)"


def test_extra_rows_are_grouped_titled_and_measured_against_their_grpo(runs_dir, tmp_path):
    res = report.build_report([runs_dir], tmp_path / "out", ["math500"], Options(benchmarks=BENCH),
                              iso_bp=None, iso_hours=None)
    keys = {(r.meta.get("accel"), r.meta.get("lora", 0)) for r in res["runs"]}
    assert keys == {(None, 0), ("capo", 0), (None, 8), ("next", 8)}, [r.meta for r in res["runs"]]
    t2 = res["table2"]["math500"].set_index("Method")
    assert list(t2.index) == ["GRPO", "CAPO+GRPO", "GRPO (LoRA r8)", "NExt (LoRA GRPO)"]
    # CAPO: against full GRPO (0.70, step 40), reached at step 30 with 30 BPs
    assert t2.loc["CAPO+GRPO", "vs"] == "GRPO"
    assert t2.loc["CAPO+GRPO", "threshold"] == pytest.approx(0.70)
    assert t2.loc["CAPO+GRPO", "Steps to match GRPO"] == 30 and t2.loc["CAPO+GRPO", "BPs to match GRPO"] == 30
    # NExt: against LoRA GRPO (0.40 at step 40, 400 s), reached at step 20; its hours hold the
    # predictor's 60 s: (18 * 10 + 2 * 40) s = 260 s
    nx = t2.loc["NExt (LoRA GRPO)"]
    assert nx["vs"] == "GRPO (LoRA r8)" and nx["threshold"] == pytest.approx(0.40) and bool(nx["reached"])
    assert nx["Steps to match GRPO"] == 20 and nx["BPs to match GRPO"] == 20
    assert nx["Hours to match GRPO"] == pytest.approx(260 / 3600)
    assert nx["Time speedup"] == pytest.approx(400 / 260)
    assert nx["NExt predictor s"] == pytest.approx(60.0) and nx["NExt events"] == 2
    assert t2.loc["GRPO", "NExt predictor s"] != t2.loc["GRPO", "NExt predictor s"]  # NaN: no such cost
    t1 = res["table1"].set_index("Method")
    assert t1.loc["NExt (LoRA GRPO)", "BP"] == 1 and t1.loc["CAPO+GRPO", "BP"] == 1
    inv = {r["run"]: r for r in pd.read_csv(tmp_path / "out" / "runs.csv").to_dict("records")}
    assert inv["lora_next"]["accel"] == "next" and inv["lora_next"]["lora"] == 8


def test_next_without_its_lora_grpo_is_left_unmeasured(runs_dir, tmp_path):
    import shutil

    shutil.rmtree(runs_dir / "lora_grpo")
    with pytest.warns(UserWarning, match="no GRPO run with the same model and LoRA rank"):
        res = report.build_report([runs_dir], tmp_path / "out", ["math500"], Options(benchmarks=BENCH),
                                  iso_bp=None, iso_hours=None, plots=False)
    nx = res["table2"]["math500"].set_index("Method").loc["NExt (LoRA GRPO)"]
    assert nx["vs"] == "-" and not bool(nx["reached"])  # not silently measured against full GRPO


def test_compare_run_dirs_are_read_from_their_overrides(tmp_path):
    """``recipe.gxpo.compare`` writes ``meta.json`` = {row, seed, overrides}: the report reads the
    rule, the accelerator and the LoRA rank from those overrides."""
    rows = {"grpo": ["actor_rollout_ref.actor.update_rule=grpo"],
            "capo_gxpo_k5": ["method=capo_gxpo_k5"],
            "next": ["method=next", "actor_rollout_ref.model.lora_rank=8"]}
    for row, ovs in rows.items():
        d = tmp_path / row / "seed2"
        _write(d, _rows(lambda s: 0.3 + 0.01 * s))
        (d / "meta.json").write_text(json.dumps({"row": row, "seed": 2, "overrides": [*ovs, "data.seed=2"]}))
    runs = [r.meta for r in report.load_runs([tmp_path])]
    got = {(m.get("method"), m.get("K"), m.get("accel"), m.get("lora"), m["seed"]) for m in runs}
    assert got == {("grpo", None, None, None, 2), ("gxpo", 5, "capo", None, 2), ("grpo", None, "next", 8, 2)}, runs


def test_gxpo_variants_are_rows_of_their_own(tmp_path):
    """Both GXPO variants of one model: two rows named by their variant, each with the variant's alpha."""
    for row, ovs in (("grpo", ["actor_rollout_ref.actor.update_rule=grpo"]),
                     ("gxpo_paper_text", ["actor_rollout_ref.actor.update_rule=gxpo", "actor_rollout_ref.actor.gxpo.variant=paper_text"]),
                     ("gxpo_authors", ["actor_rollout_ref.actor.update_rule=gxpo", "actor_rollout_ref.actor.gxpo.variant=authors"])):
        for seed in (1, 2):
            d = tmp_path / "runs" / row / f"seed{seed}"
            _write(d, _rows(lambda s: 0.3 + 0.01 * s))
            (d / "meta.json").write_text(json.dumps({"row": row, "seed": seed, "overrides": [*ovs, f"data.seed={seed}"]}))
    res = report.build_report([tmp_path / "runs"], tmp_path / "out", ["math500"], Options(benchmarks=BENCH),
                              iso_bp=None, iso_hours=None, plots=False)
    t1 = res["table1"].set_index("Method")
    assert list(t1.index) == ["GRPO", "GXPO [paper_text]", "GXPO [authors]"] and set(t1["seeds"]) == {2}
    assert t1.loc["GXPO [paper_text]", "α"] == 1.0 and t1.loc["GXPO [authors]", "α"] == 0.5
    assert runmeta.meta_from_name("sweep_tiny_gxpo_variantauthors_s1")["variant"] == "authors"
