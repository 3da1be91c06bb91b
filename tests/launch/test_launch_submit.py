"""launch.submit / launch.sweep / launch.paper_table1 without a Ray cluster (dry runs and a fake client)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from launch import paper_table1, runmeta, submit, sweep
from helpers.paths import REPO_ROOT

ROOT = REPO_ROOT


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for var in ("RAY_ADDRESS", "GXPO_LOG_DIR", "WANDB_MODE", "WANDB_API_KEY", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GXPO_LOG_DIR", str(tmp_path / "runs"))  # the launchers require a run directory
    import os

    for var in list(os.environ):
        if var.startswith(submit.PASSTHROUGH_PREFIXES) or var in submit.PASSTHROUGH_VARS:
            monkeypatch.delenv(var, raising=False)

    def no_ray(address):
        raise AssertionError("a dry run must not contact Ray")

    monkeypatch.setattr(submit, "make_client", no_ray)


def _dry(capsys, mod, argv):
    rc = mod.main(argv)
    out = capsys.readouterr().out
    assert rc == 0
    return json.loads(out)


class FakeClient:
    """Jobs run for two status polls, then end with their outcome (default SUCCEEDED). ``existing``:
    ids of finished jobs already on the cluster; ``active``: {id: metadata} of jobs still running."""

    def __init__(self, outcomes=None, existing=(), active=None):
        self.submitted = []
        self.outcomes = outcomes or {}
        self.polls = {}
        self.done = set(existing)
        self.max_running = 0
        self.existing = set(existing) | set(active or {})
        self.meta = {sid: dict(m) for sid, m in (active or {}).items()}

    def submit_job(self, **kw):
        if kw["submission_id"] in self.existing:
            raise RuntimeError(f"Job with submission_id {kw['submission_id']} already exists. Please use a different")
        self.submitted.append(kw)
        self.existing.add(kw["submission_id"])
        self.meta[kw["submission_id"]] = kw.get("metadata", {})
        running = {j["submission_id"] for j in self.submitted} - self.done
        self.max_running = max(self.max_running, len(running))
        return kw["submission_id"]

    def get_job_status(self, sid):
        if sid in self.done:
            return self.outcomes.get(sid, "SUCCEEDED")
        self.polls[sid] = self.polls.get(sid, 0) + 1
        if self.polls[sid] < 3:
            return "RUNNING"
        self.done.add(sid)
        return self.outcomes.get(sid, "SUCCEEDED")

    async def tail_job_logs(self, sid):
        for line in ("step 1\n", "step 2\n"):
            yield line

    def list_jobs(self):
        class J:
            def __init__(self, sid, metadata, status):
                self.submission_id, self.metadata, self.status = sid, metadata, status

        return [J(s, self.meta.get(s, {}), "SUCCEEDED" if s in self.done else "RUNNING") for s in self.existing]


# ---------------------------------------------------------------------------------------------- submit
def test_dry_run_json(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("VLLM_ATTENTION_BACKEND", "FLASH_ATTN")
    monkeypatch.setenv("HF_HOME", "/shared/hf")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")  # secret-looking: never passed through implicitly
    job = _dry(capsys, submit, ["--name", "llama3.2-3b_gxpo_k5", "--env", "FOO=bar", "--env", "WANDB_API_KEY=s3cret",
                                "--dry-run", "--", "experiment=paper_math", "base_model=llama3.2-3b", "method=gxpo_k5",
                                "trainer.total_training_steps=300"])
    assert set(job) == {"entrypoint", "submission_id", "runtime_env", "metadata"}
    run_dir = (tmp_path / "runs").resolve() / "llama3.2-3b_gxpo_k5"
    assert job["entrypoint"].startswith(
        "python -m recipe.gxpo.main_gxpo experiment=paper_math base_model=llama3.2-3b method=gxpo_k5 trainer.total_training_steps=300 "
        f"trainer.experiment_name=llama3.2-3b_gxpo_k5 trainer.default_local_dir={run_dir} hydra.run.dir={run_dir}/hydra/")
    assert job["submission_id"] == "llama3.2-3b_gxpo_k5"
    renv = job["runtime_env"]
    assert renv["working_dir"] == str(ROOT)
    for pat in ("/.git", "/.venv", "/outputs", "/checkpoints", "/data", "/wandb"):
        assert pat in renv["excludes"]
    env = renv["env_vars"]
    assert env["FOO"] == "bar" and env["WANDB_MODE"] == "offline" and env["PYTHONUNBUFFERED"] == "1"
    assert env["VLLM_ATTENTION_BACKEND"] == "FLASH_ATTN" and env["HF_HOME"] == "/shared/hf"
    assert "HF_TOKEN" not in env and env["WANDB_API_KEY"] == "***"  # redacted in the printout
    md = job["metadata"]
    assert (md["model"], md["method"], md["K"], md["alpha"], md["run_name"]) == \
        ("llama3.2-3b", "gxpo", "5", "1.0", "llama3.2-3b_gxpo_k5")
    assert all(isinstance(v, str) for v in md.values())


def test_dry_run_cli_and_quoting(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "launch.submit", "--name", "cli run", "--address", "10.0.0.5:8265", "--log-dir",
         str(tmp_path), "--no-env-passthrough", "--dry-run", "--", "experiment=cpu_arithmetic",
         "actor_rollout_ref.actor.update_rule=sfpo", "actor_rollout_ref.actor.sfpo.K=5", "+trainer.tags=[a,b]"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "would submit to http://10.0.0.5:8265" in proc.stderr
    job = json.loads(proc.stdout)
    assert job["submission_id"] == "cli-run"
    ep = job["entrypoint"]
    assert "'+trainer.tags=[a,b]'" in ep
    env = job["runtime_env"]["env_vars"]
    run_dir = tmp_path.resolve() / "cli-run"
    # checkpoints, metrics and wandb all go to the run directory (the entry point derives the last two)
    assert f"trainer.default_local_dir={run_dir}" in ep
    assert "VERL_FILE_LOGGER_PATH" not in env and "WANDB_DIR" not in env  # set once, by the entry point
    assert f"hydra.run.dir={run_dir}/hydra/" in ep
    assert job["metadata"]["method"] == "sfpo" and job["metadata"]["K"] == "5"
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_user_logger_and_experiment_name_are_kept():
    job = submit.build_job("r", ["trainer.logger=[console]", "trainer.experiment_name=mine"], log_dir="/tmp/x",
                           env_passthrough=False)
    assert job["entrypoint"].count("trainer.logger") == 1 and job["entrypoint"].count("experiment_name") == 1
    job = submit.build_job("r", ["experiment=paper_math"], env_passthrough=False, set_experiment_name=False)
    assert "experiment_name" not in job["entrypoint"]


def test_address_resolution(monkeypatch):
    assert submit.normalize_address(None) == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "head:8265")
    assert submit.normalize_address(None) == "http://head:8265"
    assert submit.normalize_address("https://ray.example:443") == "https://ray.example:443"


@pytest.mark.parametrize("argv, message", [
    (["--dry-run", "--", "a=1"], "--name"),
    (["--name", "x", "--dry-run", "--", "not_an_override"], "not Hydra overrides"),
    (["--name", "x", "--env", "BAD-NAME=1", "--dry-run"], "not a valid environment variable name"),
    (["--name", "x", "--env", "SURELY_UNSET_VAR_123", "--dry-run"], "not set in the local environment"),
    (["--name", "!!!", "--dry-run"], "letter or digit"),
    (["--name", "x", "--submission-id", "a b", "--dry-run"], "--submission-id"),
])
def test_bad_args(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        submit.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_env_copy_from_local(monkeypatch):
    monkeypatch.setenv("MY_SETTING", "42")
    assert submit.parse_env(["MY_SETTING", "A=b=c"]) == {"MY_SETTING": "42", "A": "b=c"}


@pytest.mark.parametrize("outcome, rc", [("SUCCEEDED", 0), ("FAILED", 1)])
def test_submit_and_wait(capsys, tmp_path, monkeypatch, outcome, rc):
    monkeypatch.setattr(submit.time, "sleep", lambda s: None)
    client = FakeClient({"run1": outcome})
    assert submit.main(["--name", "run1", "--log-dir", str(tmp_path), "--wait", "--", "experiment=cpu_arithmetic", "method=grpo"], client=client) == rc
    out = capsys.readouterr().out
    assert "step 1\nstep 2\n" in out and f"finished: {outcome}" in out
    (kw,) = client.submitted
    assert kw["submission_id"] == "run1"
    (record,) = (tmp_path / "run1").glob("launch-*.json")
    assert json.loads(record.read_text())["job"]["entrypoint"] == kw["entrypoint"]


def test_duplicate_submission_id_of_a_running_job_is_explained(capsys):
    client = FakeClient(active={"run1": {"run_name": "another run"}})
    assert submit.main(["--name", "run1", "--", "experiment=cpu_arithmetic", "method=grpo"], client=client) == 1
    assert "'run1' is still pending or running" in capsys.readouterr().err and not client.submitted


def test_unique_id():
    job = submit.build_job("r", [], unique_id=True, env_passthrough=False)
    assert job["submission_id"].startswith("r-") and len(job["submission_id"]) == len("r-20260101-000000")


# ---------------------------------------------------------------------------------------------- sweep
def test_grid_expansion_counts_and_names(capsys):
    jobs = _dry(capsys, sweep, ["--grid", "actor_rollout_ref.actor.gxpo.K=3,5,10", "--grid",
                                "actor_rollout_ref.actor.gxpo.alpha=0.5,1.0", "--seeds", "1,2", "--dry-run", "--",
                                "experiment=cpu_arithmetic", "actor_rollout_ref.actor.update_rule=gxpo"])
    assert len(jobs) == 3 * 2 * 2
    names = [j["submission_id"] for j in jobs]
    # the model (the embedded default's tiny model here) is always in the name
    assert names[:4] == ["sweep_tiny-qwen2-warm_k3_a0.5_s1", "sweep_tiny-qwen2-warm_k3_a0.5_s2", "sweep_tiny-qwen2-warm_k3_a1.0_s1",
                         "sweep_tiny-qwen2-warm_k3_a1.0_s2"]
    assert len(set(names)) == len(names)
    j = jobs[-1]
    assert j["submission_id"] == "sweep_tiny-qwen2-warm_k10_a1.0_s2"
    assert ("actor_rollout_ref.actor.gxpo.K=10 actor_rollout_ref.actor.gxpo.alpha=1.0 data.seed=2 "
            "experiment=cpu_arithmetic actor_rollout_ref.actor.update_rule=gxpo") in j["entrypoint"]
    assert (j["metadata"]["method"], j["metadata"]["K"], j["metadata"]["alpha"], j["metadata"]["seed"]) == \
        ("gxpo", "10", "1.0", "2")
    assert j["metadata"]["sweep"] == "sweep"


def test_split_values():
    assert sweep.split_values("3,5,10") == ["3", "5", "10"]
    assert sweep.split_values("[a,b],[c]") == ["[a,b]", "[c]"]
    assert sweep.split_values("'x,y',z") == ["'x,y'", "z"]
    assert sweep.split_values("range(1,4)") == ["1", "2", "3"]


def test_table1_preset_size_and_filters(capsys):
    # (the grid sizes without the precheck: composing 80 configs adds a minute; the precheck of every
    # Table 1 config is tests/conf's job, the precheck itself is tested below)
    jobs = _dry(capsys, sweep, ["--preset", "table1", "--dry-run", "--no-precheck"])
    assert len(jobs) == 4 * 7
    names = {j["submission_id"] for j in jobs}
    # seed from the composed config (paper_math: data.seed=1) when not swept
    assert "table1_qwen2.5-1.5b_grpo_s1" in names and "table1_llama3.2-3b_gxpo_k10_s1" in names
    j = next(j for j in jobs if j["submission_id"] == "table1_qwen2.5-7b_sfpo_k5_s1")
    assert "experiment=paper_math base_model=qwen2.5-7b method=sfpo_k5" in j["entrypoint"]
    meta = runmeta.merge_meta(runmeta.meta_from_name(j["submission_id"]))
    assert (meta["model"], meta["method"], meta["K"]) == ("qwen2.5-7b", "sfpo", 5)

    rows = _dry(capsys, sweep, ["--preset", "table1", "--paper-rows", "--dry-run", "--no-precheck"])
    assert len(rows) == 26  # Table 1's 24 rows and Table 2's Llama3.2-3B K=10 runs
    assert {"table1_llama3.2-3b_sfpo_k10_s1", "table1_llama3.2-3b_gxpo_k10_s1"} <= {j["submission_id"] for j in rows}
    assert "table1_qwen2.5-7b_gxpo_k10_s1" not in {j["submission_id"] for j in rows}
    assert len(_dry(capsys, paper_table1, ["--dry-run", "--no-precheck"])) == 28
    sel = _dry(capsys, paper_table1, ["--models", "llama3.2-3b", "--methods", "grpo,gxpo_k5", "--seeds", "1,2,3",
                                      "--dry-run"])
    assert [j["submission_id"] for j in sel] == [f"table1_llama3.2-3b_{m}_s{s}" for m in ("grpo", "gxpo_k5")
                                                  for s in (1, 2, 3)]
    grid = _dry(capsys, sweep, ["--preset", "table1", "--models", "qwen2.5-1.5b", "--methods", "gxpo_k5",
                                "--grid", "actor_rollout_ref.actor.gxpo.alpha=0.5,1.0", "--dry-run"])
    assert [j["submission_id"] for j in grid] == ["table1_qwen2.5-1.5b_gxpo_k5_a0.5_s1",
                                                   "table1_qwen2.5-1.5b_gxpo_k5_a1.0_s1"]
    # an experiment given by the user replaces the preset's; --experiment none drops it
    own = _dry(capsys, paper_table1, ["--models", "llama3.2-3b", "--methods", "grpo", "--dry-run", "--",
                                      "experiment=paper_math_debug"])
    assert own[0]["entrypoint"].count(" experiment=") == 1
    assert "experiment=paper_math_debug" in own[0]["entrypoint"] and "experiment=paper_math " not in own[0]["entrypoint"]
    bare_argv = ["--models", "llama3.2-3b", "--methods", "grpo", "--experiment", "none", "--dry-run"]
    with pytest.raises(SystemExit):  # a GPU model on the embedded CPU task: the precheck refuses it
        paper_table1.main(bare_argv)
    assert "experiment=paper_math" in capsys.readouterr().err
    bare = _dry(capsys, paper_table1, bare_argv + ["--no-precheck"])
    assert " experiment=" not in bare[0]["entrypoint"]


@pytest.mark.parametrize("argv, message", [
    (["--dry-run"], "nothing to sweep"),
    (["--grid", "K", "--dry-run"], "expected KEY=v1,v2"),
    (["--grid", "a.K=1", "--grid", "a.K=2", "--dry-run"], "given twice"),
    (["--grid", "a.K=[1,2", "--dry-run"], "unbalanced"),
    (["--grid", "a.K=1,,2", "--dry-run"], "empty value"),
    (["--models", "qwen2.5-3b", "--grid", "a.K=1", "--dry-run"], "filter a preset"),
    (["--preset", "table1", "--methods", "adam", "--dry-run"], "unknown ['adam']"),
    (["--preset", "table1", "--seeds", "1", "--grid", "data.seed=2", "--dry-run"], "both set the seed"),
    (["--grid", "a.K=1", "--max-concurrent", "-1", "--dry-run"], "--max-concurrent"),
])
def test_sweep_bad_args(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        sweep.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_sweep_max_concurrent_and_wait(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep.time, "sleep", lambda s: None)
    client = FakeClient({"s_qwen2.5-3b_k5_s7": "FAILED"})
    rc = sweep.main(["--name-prefix", "s", "--grid", "actor_rollout_ref.actor.gxpo.K=3,5,10", "--max-concurrent", "1",
                     "--wait", "--log-dir", str(tmp_path), "--", "method=gxpo_k5", "experiment=paper_math",
                     "base_model=qwen2.5-3b", "data.seed=7"], client=client)
    assert rc == 1  # one job failed
    assert [j["submission_id"] for j in client.submitted] == ["s_qwen2.5-3b_k3_s7", "s_qwen2.5-3b_k5_s7",
                                                              "s_qwen2.5-3b_k10_s7"]
    assert client.max_running == 1
    results = json.loads(capsys.readouterr().out)
    assert results == {"s_qwen2.5-3b_k3_s7": "SUCCEEDED", "s_qwen2.5-3b_k5_s7": "FAILED",
                       "s_qwen2.5-3b_k10_s7": "SUCCEEDED"}
    assert len(list(tmp_path.glob("s_*_k*/launch-*.json"))) == 3


def test_sweep_skip_existing(capsys):
    client = FakeClient(existing={"s_tiny-qwen2-warm_k3_s1"})
    assert sweep.main(["--name-prefix", "s", "--grid", "actor_rollout_ref.actor.gxpo.K=3,5", "--skip-existing",
                       "--", "experiment=cpu_arithmetic"],
                      client=client) == 0
    assert [j["submission_id"] for j in client.submitted] == ["s_tiny-qwen2-warm_k5_s1"]
    assert json.loads(capsys.readouterr().out) == {"s_tiny-qwen2-warm_k3_s1": "SKIPPED", "s_tiny-qwen2-warm_k5_s1": "PENDING"}


def test_runmeta_parsing():
    assert runmeta.meta_from_overrides(["method=sfpo_k10", "base_model=qwen2.5-3b", "data.seed=3"]) == \
        {"method": "sfpo", "K": 10, "model": "qwen2.5-3b", "seed": 3}
    assert runmeta.parse_method_group("gxpo_k5_a1.0") == {"method": "gxpo", "K": 5, "alpha": 1.0}
    assert runmeta.meta_from_name("paper_math_qwen2.5-1.5b_gxpo_k5_a1.0_s1") == \
        {"method": "gxpo", "K": 5, "alpha": 1.0, "seed": 1, "model": "qwen2.5-1.5b"}
    m = runmeta.merge_meta(runmeta.meta_from_overrides(["actor_rollout_ref.actor.update_rule=gxpo",
                                                        "actor_rollout_ref.actor.gxpo.alpha=0.5"]))
    assert (m["method"], m["K"], m["alpha"]) == ("gxpo", 5, 0.5)
    assert runmeta.display_model("Qwen/Qwen2.5-1.5B-Instruct") == "Qwen2.5-1.5B"
    assert runmeta.display_model("meta-llama/Llama-3.2-3B-Instruct") == "Llama3.2-3B"
    assert runmeta.display_model("llama3.2-3b") == "Llama3.2-3B"
    assert runmeta.backward_passes_per_update("sfpo", 10) == 11


# ------------------------------------------------------------------------------- run directories
def test_a_run_directory_is_required(capsys, monkeypatch):
    monkeypatch.delenv("GXPO_LOG_DIR")
    with pytest.raises(SystemExit):
        submit.main(["--name", "x", "--dry-run", "--", "experiment=cpu_arithmetic", "method=grpo"])
    assert "--log-dir (or $GXPO_LOG_DIR) is required" in capsys.readouterr().err
    # an explicit checkpoint directory is enough
    job = _dry(capsys, submit, ["--name", "x", "--dry-run", "--", "experiment=cpu_arithmetic",
                                "trainer.default_local_dir=/shared/x"])
    assert job["entrypoint"].count("default_local_dir") == 1


def test_resubmitting_a_finished_run_gets_a_new_id_and_the_same_run_dir(capsys, tmp_path):
    client = FakeClient(existing={"run1"})
    assert submit.main(["--name", "run1", "--log-dir", str(tmp_path), "--", "experiment=cpu_arithmetic", "method=grpo"], client=client) == 0
    (kw,) = client.submitted
    assert kw["submission_id"].startswith("run1-") and kw["submission_id"] != "run1"
    assert f"trainer.default_local_dir={tmp_path.resolve() / 'run1'}" in kw["entrypoint"]
    assert "resumes from its latest checkpoint" in capsys.readouterr().err


def test_a_run_with_a_running_job_is_refused(capsys, tmp_path):
    run_dir = str(tmp_path.resolve() / "run1")
    client = FakeClient(active={"run1-20260101-000000": {"run_name": "run1", "run_dir": run_dir}})
    assert submit.main(["--name", "run1", "--log-dir", str(tmp_path), "--", "experiment=cpu_arithmetic", "method=grpo"], client=client) == 1
    assert not client.submitted
    assert "still has a pending or running job (run1-20260101-000000)" in capsys.readouterr().err


def test_sweep_names_carry_model_and_seed_so_two_models_do_not_collide(capsys):
    a = _dry(capsys, sweep, ["--grid", "actor_rollout_ref.actor.gxpo.K=3,5", "--dry-run", "--",
                             "experiment=paper_math", "base_model=qwen2.5-1.5b"])
    b = _dry(capsys, sweep, ["--grid", "actor_rollout_ref.actor.gxpo.K=3,5", "--dry-run", "--",
                             "experiment=paper_math", "base_model=llama3.2-3b", "data.seed=2"])
    assert [j["submission_id"] for j in a] == ["sweep_qwen2.5-1.5b_k3_s1", "sweep_qwen2.5-1.5b_k5_s1"]
    assert [j["submission_id"] for j in b] == ["sweep_llama3.2-3b_k3_s2", "sweep_llama3.2-3b_k5_s2"]
    meta = runmeta.merge_meta(runmeta.meta_from_name(b[0]["submission_id"]))
    assert (meta["model"], meta["K"], meta["seed"]) == ("llama3.2-3b", 3, 2)


def test_sweep_refuses_colliding_names_before_submitting(capsys):
    client = FakeClient()
    with pytest.raises(SystemExit):
        sweep.main(["--grid", "trainer.project_name=a/b,a-b", "--", "experiment=cpu_arithmetic", "method=grpo"], client=client)
    assert "run names collide" in capsys.readouterr().err and not client.submitted


def test_table1_grid_has_one_source():
    """launch.table1_grid reads conf/sweep/table1.yaml: what Hydra's `-m sweep=table1` runs is what
    the launchers submit and what the report lays out."""
    from hydra import compose, initialize_config_module

    from launch import table1_grid

    with initialize_config_module(config_module="recipe.gxpo.config", version_base=None):
        cfg = compose("gxpo_trainer", overrides=["experiment=paper_math", "sweep=table1"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert table1_grid.MODELS == params.base_model.split(",") == sweep.TABLE1_MODELS
    assert table1_grid.METHODS == params.method.split(",") == sweep.TABLE1_METHODS
    assert sum(len(v) for v in table1_grid.TABLE1_ROWS.values()) == 24
    assert table1_grid.TABLE1_ROWS["llama3.2-3b"] == ["grpo", "sfpo_k3", "sfpo_k5", "gxpo_k3", "gxpo_k5"]
    # --paper-rows keeps what Table 2 reads too: Llama3.2-3B at K=10
    assert sum(len(v) for v in table1_grid.PAPER_ROWS.values()) == 26
    assert table1_grid.PAPER_ROWS["llama3.2-3b"] == table1_grid.METHODS
    assert "gxpo_k10" not in table1_grid.PAPER_ROWS["qwen2.5-7b"]


def test_runmeta_defaults_are_the_dataclass_defaults():
    from verl_ext.core.config import GXPOConfig, SFPOConfig

    m = runmeta.merge_meta({"method": "sfpo"})
    assert (m["K"], m["alpha"]) == (SFPOConfig().K, SFPOConfig().alpha)
    m = runmeta.merge_meta({"method": "gxpo"})
    assert (m["K"], m["alpha"]) == (GXPOConfig().K, GXPOConfig().alpha)


# ------------------------------------------------------------------ extra rows and the precheck
def test_paper_table1_takes_the_accelerator_rows(capsys):
    jobs = _dry(capsys, paper_table1, ["--models", "qwen2.5-7b", "--methods", "grpo,capo,capo_gxpo_k5,next",
                                       "--dry-run"])
    by_id = {j["submission_id"]: j for j in jobs}
    assert set(by_id) == {"table1_qwen2.5-7b_grpo_s1", "table1_qwen2.5-7b_capo_s1",
                          "table1_qwen2.5-7b_capo_gxpo_k5_s1", "table1_qwen2.5-7b_next_s1"}
    meta = by_id["table1_qwen2.5-7b_capo_gxpo_k5_s1"]["metadata"]
    assert (meta["method"], meta["K"], meta["accel"]) == ("gxpo", "5", "capo")
    assert by_id["table1_qwen2.5-7b_next_s1"]["metadata"]["accel"] == "next"
    assert "method=next" in by_id["table1_qwen2.5-7b_next_s1"]["entrypoint"]


def test_next_without_lora_is_refused_before_anything_is_submitted(capsys):
    client = FakeClient()
    with pytest.raises(SystemExit) as exc:
        paper_table1.main(["--models", "qwen2.5-1.5b", "--methods", "grpo,next"], client=client)
    assert exc.value.code == 2 and client.submitted == []  # the valid GRPO run is not submitted either
    err = capsys.readouterr().err
    assert "table1_qwen2.5-1.5b_next_s1" in err and "actor_rollout_ref.actor.next.enable" in err
    assert "lora_rank > 0" in err and "nothing was submitted" in err
    # with LoRA adapters on that model the same rows go through, GRPO on the same rank as NExt's reference
    assert paper_table1.main(["--models", "qwen2.5-1.5b", "--methods", "grpo,next", "--",
                              "actor_rollout_ref.model.lora_rank=8"], client=client) == 0
    assert sorted(j["metadata"]["lora"] for j in client.submitted) == ["8", "8"]


def test_submit_precheck_names_the_key_and_can_be_skipped(capsys):
    client = FakeClient()
    with pytest.raises(SystemExit) as exc:
        submit.main(["--name", "bad", "--", "actor_rollout_ref.actor.update_rule=adam"], client=client)
    assert exc.value.code == 2 and client.submitted == []
    err = capsys.readouterr().err
    assert "run bad" in err and "actor_rollout_ref.actor.update_rule" in err and "adam" in err
    with pytest.raises(SystemExit):
        submit.main(["--name", "typo", "--", "actor_rollout_ref.actor.gxpo.KK=3"], client=client)
    assert "does not compose" in capsys.readouterr().err and client.submitted == []
    assert submit.main(["--name", "bad", "--no-precheck", "--", "actor_rollout_ref.actor.update_rule=adam"],
                       client=client) == 0
    assert len(client.submitted) == 1


def test_unknown_preset_method_lists_the_conf_options(capsys):
    with pytest.raises(SystemExit):
        paper_table1.main(["--methods", "grpo,capo_k5", "--dry-run"])
    err = capsys.readouterr().err
    assert "capo_k5" in err and "capo_gxpo_k5" in err and "next" in err


# ---------------------------------------------------------------------------------- issue 24 items
def test_the_embedded_task_is_refused_on_a_cluster_unless_named(capsys):
    """A cluster submission that forgot experiment= would run the toy under a paper-looking name."""
    client = FakeClient()
    with pytest.raises(SystemExit) as exc:
        sweep.main(["--grid", "actor_rollout_ref.actor.gxpo.K=3,5", "--", "method=gxpo_k5"], client=client)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and client.submitted == []
    assert "no experiment= given" in err and "experiment=paper_math" in err and "experiment=cpu_arithmetic" in err
    assert sweep.main(["--grid", "actor_rollout_ref.actor.gxpo.K=3,5", "--", "experiment=cpu_arithmetic",
                       "method=gxpo_k5"], client=client) == 0
    assert len(client.submitted) == 2
    capsys.readouterr()
    # a GPU experiment passes (the Table 1 preset names one itself)
    assert len(_dry(capsys, paper_table1, ["--models", "qwen2.5-1.5b", "--methods", "grpo", "--dry-run"])) == 1


def test_tokenizers_parallelism_passes_through_but_tokens_do_not():
    env = submit.passthrough_env({"TOKENIZERS_PARALLELISM": "false", "HF_TOKEN": "hf_x", "HF_HOME": "/h"})
    assert env == {"TOKENIZERS_PARALLELISM": "false", "HF_HOME": "/h"}
    job = submit.build_job("r", environ={"TOKENIZERS_PARALLELISM": "false"}, env={"HF_TOKEN": "hf_x"})
    shown = submit.redacted(job)["runtime_env"]["env_vars"]
    assert shown["TOKENIZERS_PARALLELISM"] == "false" and shown["HF_TOKEN"] == "***"


def test_gated_llama_without_hf_token_gets_a_note(capsys, monkeypatch):
    argv = ["--models", "llama3.2-3b", "--methods", "grpo", "--dry-run"]

    def run(argv):
        assert paper_table1.main(argv) == 0
        out = capsys.readouterr()
        return json.loads(out.out), out.err

    _, err = run(argv)
    assert "gated Llama 3.2" in err and "--env HF_TOKEN" in err
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    (job,), err = run(argv + ["--env", "HF_TOKEN"])
    assert job["runtime_env"]["env_vars"]["HF_TOKEN"] == "***" and "gated" not in err
    _, err = run(["--models", "qwen2.5-1.5b", "--methods", "grpo", "--dry-run"])
    assert "gated" not in err


def test_paper_table1_help_names_itself(capsys):
    with pytest.raises(SystemExit):
        paper_table1.main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m launch.paper_table1") and "launch.sweep" not in out.splitlines()[0]
    assert "waits for its GPUs" in " ".join(out.split())


class FlakyClient(FakeClient):
    """The Jobs API of a head whose job agent is still starting, then a 503, then fine."""

    def __init__(self, failures):
        super().__init__()
        self.failures = list(failures)

    def submit_job(self, **kw):
        if self.failures:
            raise self.failures.pop(0)
        return super().submit_job(**kw)


def test_transient_jobs_api_errors_are_retried_with_backoff(capsys, monkeypatch, tmp_path):
    waits = []
    monkeypatch.setattr(submit.time, "sleep", waits.append)
    client = FlakyClient([RuntimeError("No available agent to submit job, please try again later."),
                          RuntimeError("Request failed with status code 503: Service Unavailable.")])
    assert submit.main(["--name", "run1", "--log-dir", str(tmp_path), "--", "experiment=cpu_arithmetic"],
                       client=client) == 0
    assert len(client.submitted) == 1 and waits == [1.0, 2.0]
    assert "retry 1/7 in 1 s" in capsys.readouterr().err
    # a bad request is not retried
    client = FlakyClient([RuntimeError("Request failed with status code 400: bad runtime_env.")])
    assert submit.main(["--name", "run2", "--log-dir", str(tmp_path), "--", "experiment=cpu_arithmetic"],
                       client=client) == 1
    assert "status code 400" in capsys.readouterr().err and waits == [1.0, 2.0]
    # a cluster that stays unavailable: bounded tries, then the error says so
    client = FlakyClient([RuntimeError("Request failed with status code 502: Bad Gateway.")] * 20)
    assert submit.main(["--name", "run3", "--log-dir", str(tmp_path), "--", "experiment=cpu_arithmetic"],
                       client=client) == 1
    assert f"still failing after {submit.RETRY_TRIES} tries" in capsys.readouterr().err
    assert waits[2:] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


class LostAnswerClient(FakeClient):
    """The first submission reaches the cluster but its answer is lost (a 502 from a proxy)."""

    def __init__(self):
        super().__init__()
        self.lost = True

    def submit_job(self, **kw):
        sid = super().submit_job(**kw)
        if self.lost:
            self.lost = False
            raise RuntimeError("Request failed with status code 502: Bad Gateway.")
        return sid

    def get_job_info(self, sid):
        import types

        return types.SimpleNamespace(metadata=self.meta[sid])


def test_a_retried_submission_that_had_reached_the_cluster_is_not_submitted_twice(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(submit.time, "sleep", lambda s: None)
    client = LostAnswerClient()
    assert submit.main(["--name", "run1", "--log-dir", str(tmp_path), "--", "experiment=cpu_arithmetic"],
                       client=client) == 0
    assert [kw["submission_id"] for kw in client.submitted] == ["run1"]
    assert "submitted run1 " in capsys.readouterr().out
