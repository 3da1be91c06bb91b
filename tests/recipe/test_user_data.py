"""A user's data is never written, and is checked on the driver before Ray starts (no Ray here).

Before: ``data.train_files=<folder>/train.parquet`` (a user's 1-row parquet with ``question`` /
``answer`` columns) on the default experiment was REPLACED by 4,096 arithmetic rows, with a
``val.parquet`` and a manifest added beside it, and the run trained on them and exited 0; a missing
file failed minutes later after Ray, having written the same files into its folder; a parquet without
the prompt column failed at the first batch with ``KeyError: 'prompt'``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from helpers.proc_env import clean_env
from recipe.gxpo.data_check import DataFileError, check_data_files
from recipe.gxpo.embedded import prepare_embedded_assets
from verl_ext.data.rows import make_row, write_rows


def _compose(*overrides):
    with initialize_config_module(config_module="recipe.gxpo.config", version_base=None):
        return compose("gxpo_trainer", overrides=list(overrides))


def _tree(folder) -> dict[str, str]:
    """Every file under ``folder`` and its sha256."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                out[os.path.relpath(os.path.join(root, name), folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture
def qa_parquet(tmp_path):
    """The user's folder with a 1-row parquet of question/answer columns (no verl row format)."""
    folder = tmp_path / "mydata"
    folder.mkdir()
    pq.write_table(pa.table({"question": ["What is 2+2?"], "answer": ["4"]}), folder / "train.parquet")
    return folder


def _main(args, cwd):
    env = clean_env(RAY_ADDRESS="local", HYDRA_FULL_ERROR="1")
    proc = subprocess.run([sys.executable, "-m", "recipe.gxpo.main_gxpo", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


def test_users_parquet_is_untouched_and_refused_for_its_missing_prompt_column_before_ray(tmp_path, qa_parquet):
    before = _tree(qa_parquet)
    emb = tmp_path / "emb"
    rc, out = _main([f"data.train_files={qa_parquet / 'train.parquet'}", f"gxpo_embedded.dir={emb}",
                     f"trainer.default_local_dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert rc != 0
    assert f"data.train_files: {qa_parquet / 'train.parquet'} has no column 'prompt'" in out, out[-3000:]
    assert "its columns: question, answer" in out and "data.prompt_key" in out
    assert _tree(qa_parquet) == before  # byte for byte, and nothing added beside it
    assert "Started a local Ray instance" not in out and not emb.exists()


def test_a_missing_file_fails_before_ray_and_writes_nothing(tmp_path):
    emb = tmp_path / "emb"
    missing = tmp_path / "nowhere" / "train.parquet"
    rc, out = _main([f"data.train_files={missing}", f"gxpo_embedded.dir={emb}",
                     f"trainer.default_local_dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert rc != 0 and f"data.train_files: {missing} does not exist" in out, out[-3000:]
    assert not (tmp_path / "nowhere").exists() and not emb.exists() and not (tmp_path / "run").exists()
    assert "Started a local Ray instance" not in out


def test_a_finished_run_rerun_writes_nothing(tmp_path):
    run = tmp_path / "run"
    (run / "global_step_2").mkdir(parents=True)
    (run / "latest_checkpointed_iteration.txt").write_text("2")
    before = _tree(run)
    emb = tmp_path / "emb"
    rc, out = _main([f"gxpo_embedded.dir={emb}", f"trainer.default_local_dir={run}", "trainer.total_training_steps=2"],
                    cwd=tmp_path)
    assert rc == 0 and "nothing to train" in out, out[-3000:]
    assert not emb.exists() and _tree(run) == before and sorted(os.listdir(run)) == ["global_step_2",
                                                                                     "latest_checkpointed_iteration.txt"]


# ------------------------------------------------------------------------- driver-side checks
def test_every_way_a_data_file_is_unusable_is_named(tmp_path):
    good = tmp_path / "good.parquet"
    write_rows([make_row(data_source="arithmetic", messages=[{"role": "user", "content": "What is 1+1?"}], ground_truth="2", split="train", index=0)], str(good))
    cases = {
        "no_prompt.parquet": (pa.table({"question": ["q"], "answer": ["a"]}), "has no column 'prompt'"),
        "no_truth.parquet": (pa.table({"prompt": [[{"role": "user", "content": "q"}]], "data_source": ["x"]}),
                             "has no column 'reward_model.ground_truth'"),
        "no_source.parquet": (pa.table({"prompt": [[{"role": "user", "content": "q"}]],
                                        "reward_model": [{"ground_truth": "1"}]}), "has no column 'data_source'"),
        "str_prompt.parquet": (pa.table({"prompt": ["q"], "data_source": ["x"], "reward_model": [{"ground_truth": "1"}]}),
                               "allowed: chat messages"),
        "empty.parquet": (pa.table({"prompt": pa.array([], pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])))}),
                          "has no rows"),
    }
    for name, (table, expected) in cases.items():
        pq.write_table(table, tmp_path / name)
        with pytest.raises(DataFileError, match=expected) as ei:
            check_data_files(_compose(f"data.train_files={tmp_path / name}", f"data.val_files={good}"))
        assert f"data.train_files: {tmp_path / name}" in str(ei.value)
    (tmp_path / "zero.parquet").write_bytes(b"")
    (tmp_path / "junk.parquet").write_bytes(b"not a parquet file")
    (tmp_path / "data.csv").write_text("prompt\nq\n")
    for name, expected in (("zero.parquet", "is empty"), ("junk.parquet", "cannot be read"),
                           ("data.csv", r"reads \.parquet \| \.json \| \.jsonl"), ("missing.parquet", "does not exist")):
        with pytest.raises(DataFileError, match=expected):
            check_data_files(_compose(f"data.val_files={tmp_path / name}", f"data.train_files={good}"))
    with pytest.raises(DataFileError, match="is a folder"):
        check_data_files(_compose(f"data.train_files={tmp_path}", f"data.val_files={good}"))
    # another prompt column, named by data.prompt_key, is fine; and the GPU experiments are checked the same way
    table = pq.read_table(good).rename_columns(["data_source", "question", *pq.read_table(good).column_names[2:]])
    pq.write_table(table, tmp_path / "renamed.parquet")
    check_data_files(_compose(f"data.train_files={tmp_path / 'renamed.parquet'}", f"data.val_files={tmp_path / 'renamed.parquet'}",
                              "data.prompt_key=question"))
    with pytest.raises(DataFileError, match="has no column 'prompt'"):
        check_data_files(_compose("experiment=paper_math", f"data.train_files={tmp_path / 'renamed.parquet'}",
                                  f"data.val_files=[{good}]"))


def test_the_builder_writes_only_into_the_cache_never_beside_a_users_file(tmp_path):
    """The user's training file with the embedded validation default: the validation data is built in
    the cache; the user's folder is not written."""
    user = tmp_path / "mine"
    user.mkdir()
    write_rows([make_row(data_source="arithmetic", messages=[{"role": "user", "content": "What is 1+1?"}], ground_truth="2", split="train", index=0)],
               str(user / "train.parquet"))
    before = _tree(user)
    root = tmp_path / "cache"
    cfg = OmegaConf.create({
        "gxpo_embedded": {"dir": str(root), "version": "vt", "data": dict(n_train=16, n_val=4, max_operand=9, held_out=True, seed=0)},
        "data": {"train_files": str(user / "train.parquet"), "val_files": f"{root}/vt/arithmetic/val.parquet"},
        "actor_rollout_ref": {"model": {"path": str(tmp_path / "my-model")}},  # a user's model: not built
    })
    assert prepare_embedded_assets(cfg) == [f"{root}/vt/arithmetic"]
    assert _tree(user) == before and os.path.exists(f"{root}/vt/arithmetic/val.parquet")
    assert not (tmp_path / "my-model").exists()
    # a user's file inside the cache folder, under another name, is not the embedded task's either
    cfg.data.train_files = f"{root}/vt/arithmetic/mine.parquet"
    cfg.data.val_files = f"{root}/vt/arithmetic/mine_val.parquet"
    assert prepare_embedded_assets(cfg) == []
