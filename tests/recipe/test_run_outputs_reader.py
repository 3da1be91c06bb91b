"""One reader of a run's metrics: the run layout's. The end-of-run summary, ``launch.compare`` and
``launch.report`` read a run directory through it and agree on every step and value."""

from __future__ import annotations

import json

import pytest

from launch.report import paired
from recipe.gxpo import run_layout, summary


def _write(path, records, torn: bool = False):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        if torn:
            f.write('{"step": 9, "data": {"val-core/x/acc/mean@4": 0.')  # a killed run's last line


@pytest.fixture
def run_dir(tmp_path):
    """A resumed run: two launches' segments (any name after "metrics"), the second re-logging step 2,
    a torn last line, and a file that is not a metrics segment."""
    d = tmp_path / "run"
    d.mkdir()
    _write(d / "metrics-20260101-000000.jsonl", [
        {"step": 0, "data": {"val-core/x/acc/mean@4": 0.25}},
        {"step": 1, "data": {"gxpo/backward_passes": 3, "timing_s/step": 2.0}},
        {"step": 2, "data": {"gxpo/backward_passes": 6, "timing_s/step": 2.0, "val-core/x/acc/mean@4": 0.4}},
    ], torn=True)
    _write(d / "metrics-20260101-010000-r2.jsonl", [
        {"step": 2, "data": {"gxpo/backward_passes": 6, "timing_s/step": 3.0, "val-core/x/acc/mean@4": 0.5}},
        {"step": 3, "data": {"gxpo/backward_passes": 9, "timing_s/step": 2.5}},
    ])
    _write(d / "generations.jsonl", [{"step": 5, "data": {"val-core/x/acc/mean@4": 1.0}}])
    return d


def test_layout_reader_merges_segments_later_wins(run_dir):
    steps = run_layout.read_metrics(str(run_dir))
    assert list(steps) == [0, 1, 2, 3]  # not 5 (not a metrics segment), not 9 (torn)
    assert steps[2]["timing_s/step"] == 3.0 and steps[2]["val-core/x/acc/mean@4"] == 0.5
    assert [p.rsplit("/", 1)[-1] for p in run_layout.metrics_files(str(run_dir))] == [
        "metrics-20260101-000000.jsonl", "metrics-20260101-010000-r2.jsonl"]
    assert run_layout.read_metrics(str(run_dir / "missing")) == {}


def test_summary_compare_and_report_read_the_same_run(run_dir):
    from launch.report.metadata import load_runs

    with pytest.warns(UserWarning, match="malformed"):
        run = paired.read_run(run_dir)  # what launch.compare's report reads: launch.report's Run of the directory
    curve = paired.run_curve(run, "val-core/x/acc/mean@4")
    assert (list(curve.index), list(curve["acc"]), list(curve["bp"])) == ([0, 2], [0.25, 0.5], [0.0, 6.0])
    assert list(curve["seconds"]) == pytest.approx([0.0, 5.0])  # 2.0 + the re-logged step 2's 3.0
    rows = summary.read_metrics(str(run_dir))
    assert {r["_step"]: r["timing_s/step"] for r in rows if "timing_s/step" in r} == {1: 2.0, 2: 3.0, 3: 2.5}
    text = summary.summarize(str(run_dir), str(run_dir), "gxpo")
    assert "training steps logged: 3" in text and "gxpo/backward_passes: 9" in text
    assert "training wall-clock (sum of timing_s/step): 7.5 s" in text

    with pytest.warns(UserWarning, match="malformed"):
        runs = [r for r in load_runs([str(run_dir)]) if r.name == "run"]
    assert len(runs) == 1
    hist = runs[0].hist
    assert list(hist.index) == [0, 1, 2, 3]
    assert hist.loc[2, "timing_s/step"] == 3.0 and hist.loc[2, "val-core/x/acc/mean@4"] == 0.5

