"""The embedded arithmetic task: data determinism, disjoint splits, verl row format, reward."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from verl_ext.data import arithmetic as ar
from verl_ext.data.rows import ROW_SCHEMA, read_rows
from verl_ext.rewards.arithmetic_reward import compute_score, extract_integer


def _key(row: dict) -> str:
    return row["prompt"][0]["content"]


def test_default_rows_are_short_single_digit_additions():
    train, val = ar.make_arithmetic_rows()
    assert len(train) == 1024 and len(val) == 32
    for r in train + val:
        content = _key(r)
        assert len(content) < 40
        assert r["prompt"] == [{"role": "user", "content": content}]
        a, b = r["extra_info"]["id"].split("+")
        assert 0 <= int(a) <= 9 and 0 <= int(b) <= 9
        assert content == f"What is {a}+{b}?"
        assert r["reward_model"] == {"style": "rule", "ground_truth": str(int(a) + int(b))}
        assert r["data_source"] == "arithmetic" and r["extra_info"]["type"] == "add"
    assert [r["extra_info"]["index"] for r in train] == list(range(len(train)))
    assert {r["extra_info"]["split"] for r in train} == {"train"}
    assert {r["extra_info"]["split"] for r in val} == {"val"}


def test_deterministic_given_seed_and_seed_matters():
    a = ar.make_arithmetic_rows(n_train=50, n_val=10, seed=3)
    b = ar.make_arithmetic_rows(n_train=50, n_val=10, seed=3)
    c = ar.make_arithmetic_rows(n_train=50, n_val=10, seed=4)
    assert a == b
    assert a != c


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"n_train": 10, "n_val": 5},
        {"n_train": 500, "n_val": 90},  # only 10 distinct training problems left: repeats
        {"ops": "+-*", "max_operand": 12, "n_val": 40},
        {"ops": ["-"], "allow_negative": True, "min_operand": -3, "max_operand": 3},
    ],
)
def test_train_and_val_never_share_a_problem(kwargs):
    train, val = ar.make_arithmetic_rows(**kwargs)
    train_keys = {_key(r) for r in train}
    val_keys = [_key(r) for r in val]
    assert len(val_keys) == len(set(val_keys))  # validation problems are distinct
    assert not train_keys & set(val_keys)


def test_train_cycles_through_the_pool_when_larger():
    train, val = ar.make_arithmetic_rows(n_train=200, n_val=90)  # 10 left for training
    keys = [_key(r) for r in train]
    assert len(set(keys)) == 10
    # every pass of 10 covers the whole pool once
    for i in range(0, 200, 10):
        assert len(set(keys[i : i + 10])) == 10


def test_difficulty_knobs():
    probs = ar.enumerate_problems(max_operand=9, ops="+")
    assert len(probs) == 100
    subs = ar.enumerate_problems(max_operand=5, ops="-")
    assert all(r >= 0 and a - b == r for a, _, b, r in subs)
    muls = ar.enumerate_problems(max_operand=3, ops="*", min_operand=1)
    assert {(a, b, r) for a, _, b, r in muls} == {(a, b, a * b) for a in range(1, 4) for b in range(1, 4)}
    with pytest.raises(ValueError):
        ar.enumerate_problems(ops="/")
    with pytest.raises(ValueError):
        ar.make_arithmetic_rows(n_val=100)  # nothing left to train on
    train, _ = ar.make_arithmetic_rows(n_train=5, n_val=1, template="{a}{op}{b}=")
    assert all(_key(r).endswith("=") for r in train)


def test_dataset_files_and_cli(tmp_path, capsys):
    info = ar.make_arithmetic_dataset(str(tmp_path / "a"), n_train=40, n_val=8, seed=1)
    assert info["n_train"] == 40 and info["n_val"] == 8 and info["n_distinct"] == 100
    for split, n in (("train", 40), ("val", 8)):
        table = pq.read_table(info[split])
        assert table.schema.equals(ROW_SCHEMA, check_metadata=False)
        assert table.num_rows == n
    assert ar.main(["--out_dir", str(tmp_path / "b"), "--n_train", "40", "--n_val", "8", "--seed", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert read_rows(printed["train"]) == read_rows(info["train"])
    assert read_rows(printed["val"]) == read_rows(info["val"])


# ------------------------------------------------------------------------------------- reward
@pytest.mark.parametrize(
    "response,gt,expected",
    [
        ("7", "7", 1.0),
        ("\\boxed{7}", "7", 1.0),
        ("\\boxed{ 7 }", "7", 1.0),
        ("3+4=7", "7", 1.0),
        ("The answer is 7.", "7", 1.0),
        ("8", "7", 0.0),
        ("77", "7", 0.0),
        ("7.0", "7", 0.0),
        ("7 or 8", "7", 0.0),  # the last integer counts
        ("\\boxed{7} no wait 8", "7", 1.0),  # a box wins over later numbers
        ("\\boxed{8} \\boxed{7}", "7", 1.0),  # last box counts
        ("\\boxed{7} \\boxed{8}", "7", 0.0),
        ("\\boxed{7", "7", 0.0),  # unbalanced last box
        ("\\boxed{7} \\boxed{", "7", 0.0),
        ("\\boxed{seven}", "7", 0.0),
        ("\\boxed{3+4}", "7", 0.0),
        ("-3", "-3", 1.0),
        ("\\boxed{-3}", "-3", 1.0),
        ("3", "-3", 0.0),
        ("", "7", 0.0),
        (None, "7", 0.0),
        (7, "7", 0.0),
        (b"7", "7", 1.0),
        ("7", None, 0.0),
        ("7", 7, 1.0),
        ("7", 7.0, 1.0),
        ("7", "seven", 0.0),
        ("9" * 100, "9" * 100, 0.0),  # not a small integer
        ("x" * 100_000 + "7", "7", 1.0),
        ("\x00\ud800{}}}{{\\", "7", 0.0),
    ],
)
def test_reward(response, gt, expected):
    out = compute_score("arithmetic", response, gt, {"index": 0})
    assert out["score"] == expected
    assert out["acc"] == expected
    assert set(out) == {"score", "acc", "pred"}


def test_reward_on_generated_rows_and_extract_integer():
    train, _ = ar.make_arithmetic_rows(n_train=20, n_val=2)
    for r in train:
        gt = r["reward_model"]["ground_truth"]
        assert (
            compute_score(data_source=r["data_source"], solution_str=gt, ground_truth=gt, extra_info=r["extra_info"])[
                "score"
            ]
            == 1.0
        )
        assert (
            compute_score(data_source=r["data_source"], solution_str=f"\\boxed{{{int(gt) + 1}}}", ground_truth=gt)[
                "score"
            ]
            == 0.0
        )
    assert extract_integer("a 12 b") == 12
    assert extract_integer("none") is None


def test_in_distribution_validation_covers_every_problem_once():
    from verl_ext.data.arithmetic import make_arithmetic_rows

    train, val = make_arithmetic_rows(n_train=100, n_val=7, max_operand=4, held_out=False, seed=3)
    val_q = [r["prompt"][0]["content"] for r in val]
    assert len(val_q) == len(set(val_q)) == 25  # n_val is ignored: all 25 sums of 0..4
    assert {r["prompt"][0]["content"] for r in train} == set(val_q)  # training sees every problem too
    for r in val:
        a, b = r["prompt"][0]["content"][len("What is "):-1].split("+")
        assert r["reward_model"]["ground_truth"] == str(int(a) + int(b))
