"""The concise console backend and the compare command's report (launch.report.paired over launch.report's
reader, statistics and plots; pure, no runs)."""

from __future__ import annotations

import json
import math

import pytest
from omegaconf import OmegaConf

from launch import compare as launch_compare
from launch.report import paired
from recipe.gxpo import compare
from verl_ext.tracking.console import ConciseConsole, format_step, install_console


def _cfg(console="concise", rule="gxpo"):
    return OmegaConf.create({"trainer": {"console": console}, "actor_rollout_ref": {"actor": {"update_rule": rule}}})


def test_format_step_one_readable_line():
    data = {"critic/score/mean": 0.40625, "gxpo/backward_passes": 12.0, "gxpo/shutoff_update": -1.0,
            "timing_s/step": 2.345, "actor/pg_loss": 0.1, **{f"junk/{i}": i for i in range(150)}}
    line = format_step(data, 4, 60, "gxpo")
    assert line == "[gxpo] step  4/60 | reward 0.406 | gxpo active, 12 BP | 2.35 s/step"
    data.update({"gxpo/shutoff_update": 14.0, "val-core/arithmetic/acc/mean@4": 0.5125})
    assert format_step(data, 10, 60, "gxpo").endswith("gxpo shutoff@upd 14, 12 BP | 2.35 s/step | val 0.512")
    assert format_step({"val-core/arithmetic/acc/mean@4": 0.3}, 0, 60, "grpo") == "[gxpo] step  0/60 | val 0.300"
    assert format_step({"grpo/backward_passes": 2.0}, 1, None, "grpo") == "[gxpo] step   1 | grpo 2 BP"


def test_install_console_swaps_only_verls_console_backend(tmp_path, monkeypatch):
    from verl.utils.tracking import Tracking

    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(tmp_path / "m.jsonl"))
    tracking = Tracking("p", "e", default_backend=["console", "file"])
    file_backend = tracking.logger["file"]
    assert install_console(tracking, _cfg(), 60)
    assert isinstance(tracking.logger["console"], ConciseConsole)
    assert tracking.logger["file"] is file_backend
    assert not install_console(tracking, _cfg(), 60)  # idempotent
    tracking.log({"critic/score/mean": 0.5, "x": 1.0}, step=1)
    tracking.finish()
    rows = [json.loads(line) for line in open(tmp_path / "m.jsonl")]
    assert rows[-1]["data"]["x"] == 1.0  # the file still gets every metric

    full = Tracking("p", "e", default_backend=["console"])
    assert not install_console(full, _cfg("full"), 60)
    assert not isinstance(full.logger["console"], ConciseConsole)


def test_bad_console_mode_names_key_and_allowed():
    from verl_ext.core.config import ConfigError
    from verl_ext.tracking.console import console_mode

    with pytest.raises(ConfigError, match="trainer.console"):
        console_mode(_cfg("loud"))


# ---------------------------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------------------------


def _write_run(path, rule, accs, bp_per_step, sec_per_step=2.0, shutoff=None, test_freq=2):
    """A finished ``<out>/<row>/seed<N>`` run: compare's meta.json (the row's overrides) and metrics."""
    path.mkdir(parents=True)
    row, seed = path.parent.name, int(path.name.removeprefix("seed"))
    args = compare.run_args(row, seed, path, (len(accs) - 1) * test_freq, [])
    (path / "meta.json").write_text(json.dumps({"row": row, "seed": seed, "overrides": args}))
    with open(path / "metrics-1.jsonl", "w") as f:
        f.write(json.dumps({"step": 0, "data": {"val-core/arithmetic/acc/mean@4": accs[0]}}) + "\n")
        f.write("{broken line\n")
        for step in range(1, (len(accs) - 1) * test_freq + 1):
            d = {"timing_s/step": sec_per_step, f"{rule}/backward_passes": float(bp_per_step * step)}
            if shutoff is not None:
                d[f"{rule}/shutoff_update"] = float(shutoff)
            if step % test_freq == 0:
                d["val-core/arithmetic/acc/mean@4"] = accs[step // test_freq]
            f.write(json.dumps({"step": step, "data": d}) + "\n")


def test_reader_curve_and_statistics(tmp_path):
    _write_run(tmp_path / "grpo" / "seed1", "grpo", [0.3, 0.4, 0.5, 0.45], 2)
    _write_run(tmp_path / "grpo" / "seed2", "grpo", [0.3, 0.35, 0.4, 0.42], 2)
    _write_run(tmp_path / "gxpo" / "seed1", "gxpo", [0.3, 0.5, 0.55, 0.5], 6, shutoff=3)
    _write_run(tmp_path / "gxpo" / "seed2", "gxpo", [0.3, 0.36, 0.38, 0.41], 6, shutoff=-1)
    with pytest.warns(UserWarning, match="malformed"):  # the broken line is skipped, not fatal
        runs = paired.read_rows(tmp_path, ["grpo", "gxpo"], [1, 2, 3])  # no seed 3: left out
    assert {row: sorted(by_seed) for row, by_seed in runs.items()} == {"grpo": [1, 2], "gxpo": [1, 2]}
    metric = paired.val_key(runs)
    assert metric == "val-core/arithmetic/acc/mean@4"
    c = paired.run_curve(runs["gxpo"][1], metric)  # launch.report.derive.curve + seconds
    assert list(c.index) == [0, 2, 4, 6] and list(c["acc"]) == [0.3, 0.5, 0.55, 0.5]
    assert list(c["bp"]) == [0.0, 12.0, 24.0, 36.0] and list(c["seconds"]) == pytest.approx([0.0, 4.0, 8.0, 12.0])
    assert paired.run_extras(runs["gxpo"][1], "gxpo")["shutoff"] == 3
    assert paired.run_extras(runs["gxpo"][2], "gxpo")["shutoff"] is None  # -1: never shut off

    st = paired.summarize(runs, metric)
    g, x = st["grpo"], st["gxpo"]
    assert g["reach"][1] == {"step": 4, "bp": 8.0, "seconds": pytest.approx(8.0)}  # GRPO reaches its own peak at its argmax
    assert x["reach"][1] == {"step": 2, "bp": 12.0, "seconds": pytest.approx(4.0)}  # 0.5 >= GRPO's 0.5 at step 2
    assert x["reach"][2] is None and x["reached"] == "1/2"  # 0.41 < 0.42: not reached, counted
    assert x["reach_mean"]["step"] == 2
    assert x["shutoff"] == {1: 3, 2: None}
    m, h = x["final_mean_ci"]
    assert m == pytest.approx(0.455) and h == pytest.approx(12.706 * math.sqrt(((0.5 - 0.455) ** 2 + (0.41 - 0.455) ** 2)) / math.sqrt(2))
    d, hd = x["paired_final_diff"]  # per-seed differences 0.05 and -0.01
    assert d == pytest.approx(0.02) and hd == pytest.approx(12.706 * math.sqrt(2 * 0.03 ** 2) / math.sqrt(2))
    assert x["wins_final"] == "1/2"
    md = paired.markdown(st, metric, 6, {})
    assert "not reached" in md and "| gxpo | grpo | 0.300 |" in md


def test_lora_rows_are_measured_against_lora_grpo_and_show_the_predictor_cost(tmp_path):
    """NExt's reference is LoRA GRPO (same adapters, same lr), not full-parameter GRPO; its predictor
    seconds are reported; the other rows keep full GRPO as reference."""
    _write_run(tmp_path / "grpo" / "seed1", "grpo", [0.3, 0.6, 0.7], 2)
    _write_run(tmp_path / "grpo_lora" / "seed1", "grpo", [0.3, 0.35, 0.4], 2)
    _write_run(tmp_path / "next" / "seed1", "grpo", [0.3, 0.4, 0.45], 2)
    _write_run(tmp_path / "capo" / "seed1", "grpo", [0.3, 0.5, 0.6], 2)
    with open(tmp_path / "next" / "seed1" / "metrics-1.jsonl", "a") as f:
        f.write(json.dumps({"step": 4, "data": {"next/predictor_seconds_total": 7.5, "next/events": 1.0}}) + "\n")
    with open(tmp_path / "capo" / "seed1" / "metrics-1.jsonl", "a") as f:  # CAPO's mask: 10% then 30% of tokens
        for step, frac in ((1, 0.1), (2, 0.3)):
            f.write(json.dumps({"step": step, "data": {"capo/masked_frac": frac}}) + "\n")
    md = paired.report(tmp_path, ["grpo", "grpo_lora", "next", "capo"], [1], 4)
    st = json.loads((tmp_path / "summary.json").read_text())["stats"]
    assert st["next"]["reference"] == "grpo_lora" and st["next"]["reached"] == "1/1"  # 0.4 >= LoRA GRPO's 0.4
    assert st["capo"]["reference"] == "grpo" and st["capo"]["reached"] == "0/1"  # 0.6 < GRPO's 0.7
    assert st["next"]["paired_final_diff"][0] == pytest.approx(0.05)
    assert "NExt predictor 7.5 s, 1.0 events" in md
    assert "CAPO masked 20% of tokens" in md  # mean over the logged steps
    assert compare.rule_of("capo_gxpo_k5") == "gxpo" and compare.rule_of("next") == "grpo"


def test_rows_are_validated_before_anything_runs(capsys):
    with pytest.raises(SystemExit):
        launch_compare.main(["--rows", "grpo,next", "--report-only"])
    assert "add grpo_lora" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        launch_compare.main(["--rows", "grpo,gxpo_fast", "--report-only"])
    assert "gxpo_fast" in capsys.readouterr().err


def test_report_writes_summary_and_plot(tmp_path):
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    from launch.report.plots import draw_panel

    for s in (1, 2, 3):
        _write_run(tmp_path / "grpo" / f"seed{s}", "grpo", [0.3, 0.4, 0.5], 2)
        _write_run(tmp_path / "sfpo" / f"seed{s}", "sfpo", [0.3, 0.45, 0.48], 4, shutoff=-1)
        _write_run(tmp_path / "grpo_lr1e-3" / f"seed{s}", "grpo", [0.3, 0.2 + 0.1 * (s - 1), 0.1], 2)
    rows = ["grpo", "sfpo", "grpo_lr1e-3"]
    md = paired.report(tmp_path, rows, [1, 2, 3], 4)
    assert (tmp_path / "summary.md").read_text() == md
    assert (tmp_path / "compare.png").stat().st_size > 1000
    out = json.loads((tmp_path / "summary.json").read_text())
    assert out["stats"]["sfpo"]["reached"] == "0/3"
    assert out["curves"]["sfpo"]["2"]["bp"] == [0.0, 8.0, 16.0]  # 4 BP a step

    # compare.png's panels: one Group per row, named after it (grpo and grpo_lr1e-3 share a configuration key)
    groups = paired.groups_of(paired.read_rows(tmp_path, rows, [1, 2, 3]))
    assert [g.name for g in groups] == rows and groups[0].key == groups[2].key
    assert [len(g.runs) for g in groups] == [3, 3, 3]
    fig, axes = plt.subplots(1, 3)
    for ax, axis in zip(axes, ("step", "bp", "hours")):
        draw_panel(ax, groups, out["metric"], paired.Options(), axis)
    labels = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert labels == [f"{r} (mean of 3 seeds, band: min-max)" for r in rows] + ["GRPO peak"]
    assert axes[0].lines[0].get_color() == "black"  # the grpo row is the reference, not grpo_lr1e-3
    assert list(axes[1].lines[1].get_xdata()) == [0.0, 8.0, 16.0]  # sfpo against BP
    band = [c for c in axes[0].collections if isinstance(c, PolyCollection)][2]  # grpo_lr1e-3's seeds: 0.2..0.4
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(10.0) and ys.max() == pytest.approx(40.0)
    plt.close(fig)


def test_one_seed_has_no_interval(tmp_path):
    _write_run(tmp_path / "grpo" / "seed1", "grpo", [0.3, 0.5], 2)
    _write_run(tmp_path / "sfpo" / "seed1", "sfpo", [0.3, 0.6], 4)
    runs = paired.read_rows(tmp_path, ["grpo", "sfpo"], [1])
    st = paired.summarize(runs, paired.val_key(runs))
    assert st["sfpo"]["final_mean_ci"][0] == pytest.approx(0.6) and math.isnan(st["sfpo"]["final_mean_ci"][1])
    assert st["sfpo"]["paired_final_diff"][0] == pytest.approx(0.1) and math.isnan(st["sfpo"]["paired_final_diff"][1])
    assert "| 0.600 | 0.600 |" in paired.markdown(st, "m", 2, {})  # final and peak without "±"


def test_resume_keeps_finished_runs_with_the_same_overrides_only(tmp_path):
    run_dir = tmp_path / "grpo" / "seed1"
    run_dir.mkdir(parents=True)
    args = compare.run_args("grpo", 1, run_dir, 20, [])
    (run_dir / "meta.json").write_text(json.dumps({"row": "grpo", "seed": 1, "overrides": args}))
    assert not compare.finished(run_dir, args)  # no wall_s.txt: it did not finish
    (run_dir / "wall_s.txt").write_text("61.0\n")
    assert compare.finished(run_dir, args)
    assert not compare.finished(run_dir, compare.run_args("grpo", 1, run_dir, 30, []))  # other steps: rerun
    # where Hydra keeps its records does not change what was trained (runs from before that override count)
    assert compare.finished(run_dir, [a for a in args if not a.startswith("hydra.")])
    assert any(a == f"hydra.run.dir={run_dir / 'hydra' / 'run'}" for a in args)
    assert compare.run_one("grpo", 1, tmp_path, 20, [], resume=True) == (run_dir, 61.0)
    assert not (run_dir / "stdout.log").exists()  # nothing ran
