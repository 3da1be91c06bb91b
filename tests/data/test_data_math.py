"""GXPO math data preparation on small local fixtures (no hub access)."""

from __future__ import annotations

import json
import os
import shutil

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
from helpers.paths import FIXTURES_DIR  # noqa: E402

from verl_ext.data import math_datasets as md  # noqa: E402
from verl_ext.data.prepare_math import main as prepare_main  # noqa: E402
from verl_ext.data.prompts import (  # noqa: E402
    DEFAULT_PROMPT_STYLE,
    MATH_INSTRUCTION,
    PROMPT_STYLES,
    VERL_INSTRUCTION,
    format_math_prompt,
    make_math_messages,
)
from verl_ext.data.rows import ROW_SCHEMA, read_rows  # noqa: E402
from verl_ext.rewards.extraction import (  # noqa: E402
    all_boxed_contents,
    gsm8k_final_answer,
    last_boxed_content,
    last_number,
)

FIXTURES = str(FIXTURES_DIR / "data")


def _load(name: str) -> list[dict]:
    return md.load_local_rows(FIXTURES, name)


def _gts(rows: list[dict]) -> list[str]:
    return [r["reward_model"]["ground_truth"] for r in rows]


# ------------------------------------------------------------------------------------- prompt
def test_prompt_is_one_user_message_asking_for_a_box():
    msgs = make_math_messages("  What is $1+1$?\n", "qwen")
    assert msgs == [{"role": "user", "content": "What is $1+1$?\n\n" + MATH_INSTRUCTION}]
    assert "\\boxed{}" in MATH_INSTRUCTION and "step by step" in MATH_INSTRUCTION
    assert format_math_prompt("Q", "qwen") == msgs[0]["content"].replace("What is $1+1$?", "Q")
    for style in PROMPT_STYLES:
        for split in ("train", "test"):
            (msg,) = make_math_messages("Q", style, split)
            assert msg["role"] == "user" and "\\boxed{}" in msg["content"] and "Q" in msg["content"]


def test_prompt_styles_follow_the_authors_scripts():
    # the authors' paper-protocol data: verl's instruction after a space for training ...
    assert format_math_prompt(" Q ", "authors", "train") == "Q " + VERL_INSTRUCTION
    assert format_math_prompt("Q", "verl", "test") == "Q Let's think step by step and output the final answer within \\boxed{}."
    # ... and SFPO's prompt for the evaluation sets
    sfpo = format_math_prompt("Q", "authors", "test")
    assert sfpo == format_math_prompt("Q", "sfpo", "train")
    assert sfpo.startswith("Please solve the following math problem: Q. ") and "\\boxed{1}" in sfpo
    assert DEFAULT_PROMPT_STYLE == "authors"
    with pytest.raises(ValueError, match="prompt style"):
        format_math_prompt("Q", "chatml")


# --------------------------------------------------------------------------------- extraction
@pytest.mark.parametrize(
    "text,expected",
    [
        ("so $\\boxed{5}$", "5"),
        ("$\\boxed{\\frac{\\sqrt{3}}{2}}$", "\\frac{\\sqrt{3}}{2}"),
        ("\\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
        ("\\fbox{8\\pi}", "8\\pi"),
        ("\\boxed 5 done", "5"),
        ("\\boxed{3} and finally \\boxed{\\frac{1}{2}", None),  # the last box is unbalanced
        ("no box here", None),
        ("\\boxed", None),
        ("\\boxedfoo{3}", None),
        ("\\boxed{ 7 }", "7"),
    ],
)
def test_last_boxed_content(text, expected):
    assert last_boxed_content(text) == expected


def test_extraction_helpers_on_junk():
    assert last_boxed_content(None) is None
    assert last_boxed_content(12) is None
    assert all_boxed_contents("\\boxed{a} x \\fbox{b} \\boxed{c") == ["a", "b"]
    assert gsm8k_final_answer("work\n#### 1,234") == "1234"
    assert gsm8k_final_answer("#### $5.") == "5"
    assert gsm8k_final_answer("no marker 5") is None
    assert gsm8k_final_answer(None) is None
    assert last_number("costs $1,234.50 in total, or 7") == "7"
    assert last_number("answer: -3.") == "-3"
    assert last_number("nothing") is None


# ---------------------------------------------------------------------------------- converters
def test_math_train_keeps_levels_3_to_5_with_boxed_ground_truth():
    stats: dict = {}
    rows = md.convert_math_train(_load("train"), stats=stats)
    assert _gts(rows) == ["\\frac{\\sqrt{3}}{2}", "2", "\\{1,2\\}", "8\\pi", "\\left(-\\infty, 3\\right]"]
    assert [r["extra_info"]["level"] for r in rows] == ["Level 3", "Level 4", "Level 5", "Level 3", "Level 5"]
    assert rows[0]["extra_info"]["type"] == "Precalculus"
    assert [r["extra_info"]["index"] for r in rows] == list(range(5))
    assert all(r["data_source"] == md.DATA_SOURCES["train"] and r["extra_info"]["split"] == "train" for r in rows)
    # Level 1, Level 2 and "Level ?" filtered; the Level 4 row without a box dropped
    assert stats == {"filtered_level": 3, "no_answer": 1, "kept": 5}


def test_math_train_level_parameter_and_parse_level():
    rows = md.convert_math_train(_load("train"), levels=(1, 2))
    assert _gts(rows) == ["2", "12"]
    assert md.parse_level("Level 3") == 3 and md.parse_level(4) == 4 and md.parse_level("Level ?") is None


def test_math500_uses_answer_field_then_solution_box():
    rows = md.convert_math500(_load("math500"))
    assert _gts(rows) == ["\\left( 3, \\frac{\\pi}{2} \\right)", "\\frac{5}{6}", "\\text{Tuesday}", "10"]
    assert rows[0]["extra_info"]["id"] == "test/precalculus/807.json"
    assert rows[0]["extra_info"]["level"] == "2" and rows[0]["extra_info"]["type"] == "Precalculus"


def test_amc23_numeric_answers_are_normalised():
    rows = md.convert_amc23(_load("amc23"))
    assert _gts(rows) == ["9", "27", "\\frac{3}{8}", "2.5"]
    assert [r["extra_info"]["id"] for r in rows] == ["0", "1", "2", "3"]


def test_gsm8k_takes_the_number_after_hashes():
    stats: dict = {}
    rows = md.convert_gsm8k(_load("gsm8k"), stats=stats)
    assert _gts(rows) == ["7", "1234", "2.5"]
    assert stats["no_answer"] == 1
    assert rows[0]["extra_info"]["question"].startswith("Tom has 3 apples")


def test_minerva_from_a_folder_of_files():
    assert md.local_files_for(FIXTURES, "minerva") == [os.path.join(FIXTURES, "minerva", "test.jsonl")]
    rows = md.convert_minerva(_load("minerva"))
    assert _gts(rows) == ["2.5", "\\frac{1}{4}", "500"]


def test_olympiadbench_context_modality_and_multi_answers():
    stats: dict = {}
    rows = md.convert_olympiadbench(_load("olympiadbench"), stats=stats)
    assert _gts(rows) == ["\\frac{1}{2}", "3, 5", "7", "2, -2"]
    assert stats["filtered_modality"] == 1
    q = rows[2]["extra_info"]["question"]
    assert q == "Let $a=3$ and $b=4$.\n\nCompute $a+b$."
    assert rows[2]["prompt"][0]["content"] == format_math_prompt(q)
    assert rows[0]["extra_info"]["id"] == "2231" and rows[0]["extra_info"]["type"] == "Algebra"


def test_clean_answer_variants():
    assert md.clean_answer(27.0) == "27"
    assert md.clean_answer(0.25) == "0.25"
    assert md.clean_answer(float("nan")) is None
    assert md.clean_answer(["$3$", "$5$"]) == "3, 5"
    assert md.clean_answer("$\\boxed{5}$") == "5"
    assert md.clean_answer("\\$18.90") == "\\$18.90"
    assert md.clean_answer("  ") is None
    assert md.clean_answer(None) is None


def test_same_prompt_style_for_every_set():
    for name in md.ALL_SETS:
        rows = md.build_set(name, source_dir=FIXTURES)
        assert rows, name
        for r in rows:
            split = "train" if name == "train" else "test"
            assert r["prompt"] == make_math_messages(r["extra_info"]["question"], "authors", split)
            assert r["ability"] == "math"
            assert r["reward_model"]["style"] == "rule"
            assert r["data_source"] == md.DATA_SOURCES[name]


def test_build_set_accepts_rows_directly_and_rejects_unknown_sets():
    rows = md.build_set("gsm8k", rows=[{"question": "q", "answer": "x\n#### 3"}])
    assert _gts(rows) == ["3"]
    with pytest.raises(ValueError):
        md.build_set("aime", rows=[])
    with pytest.raises(FileNotFoundError):
        md.load_local_rows(FIXTURES, "does_not_exist")


def test_hub_sources_documented():
    assert set(md.HUB_SOURCES) == set(md.ALL_SETS) == set(md.CONVERTERS) == set(md.DATA_SOURCES)
    assert md.HUB_SOURCES["gsm8k"].repo_id == "openai/gsm8k" and md.HUB_SOURCES["gsm8k"].config == "main"
    for name, src in md.HUB_SOURCES.items():
        assert src.repo_id in md.__doc__, name


# ----------------------------------------------------------------------------- CLI + parquet
@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("gxpo_math")
    assert prepare_main(["--out_dir", str(out), "--source_dir", FIXTURES]) == 0
    return out


def test_cli_writes_every_set_with_the_verl_schema(prepared):
    expected_counts = {"train": 5, "math500": 4, "amc23": 4, "gsm8k": 3, "minerva": 3, "olympiadbench": 4}
    for name in md.ALL_SETS:
        path = prepared / md.OUTPUT_FILES[name]
        assert path.is_file(), name
        table = pq.read_table(path)
        assert table.schema.equals(ROW_SCHEMA, check_metadata=False), name
        assert table.num_rows == expected_counts[name]
        rows = read_rows(str(path))
        assert [r["extra_info"]["index"] for r in rows] == list(range(len(rows)))
        assert {r["data_source"] for r in rows} == {md.DATA_SOURCES[name]}


def test_parquet_round_trip_preserves_rows(tmp_path):
    rows = md.build_set("olympiadbench", source_dir=FIXTURES)
    from verl_ext.data.rows import write_rows

    path = write_rows(rows, str(tmp_path / "x.parquet"))
    assert read_rows(path) == rows


def test_train_set_options(tmp_path, capsys):
    """math_train: the train split at levels 3-5; math_train_test: + the test split, minus MATH-500."""
    out = tmp_path / "a"
    args = ["--out_dir", str(out), "--sets", "train", "--source_dir", FIXTURES]
    assert prepare_main(args) == 0
    assert len(read_rows(str(out / "train.parquet"))) == 5
    out = tmp_path / "b"
    args = ["--out_dir", str(out), "--sets", "train", "--source_dir", FIXTURES, "--train_set", "math_train_test"]
    assert prepare_main(args + ["--prompt", "qwen"]) == 0
    info = json.loads(capsys.readouterr().out.splitlines()[-1])
    rows = read_rows(str(out / "train.parquet"))
    questions = [r["extra_info"]["question"] for r in rows]
    # the level-3 test problem is a MATH-500 problem (whitespace aside): excluded; level 2: filtered
    assert len(rows) == 6 and questions[-1] == "A test-split problem at level 4."
    assert info["excluded"] == 1 and info["rows"] == 6
    assert all(r["prompt"][0]["content"].endswith(MATH_INSTRUCTION) for r in rows)
    with pytest.raises(SystemExit):
        prepare_main(args[:-2] + ["--train_set", "train_and_more"])
    with pytest.raises(ValueError, match="prompt style"):
        md.prepare(str(out), sets=["gsm8k"], source_dir=FIXTURES, prompt="chatml")


def test_cli_subset_and_parquet_sources(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    import pyarrow as pa

    # a parquet copy of the OlympiadBench fixture, and a json copy of GSM8K
    with open(os.path.join(FIXTURES, "olympiadbench.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    pq.write_table(pa.Table.from_pylist(rows), src / "olympiadbench.parquet")
    shutil.copy(os.path.join(FIXTURES, "gsm8k.jsonl"), src / "gsm8k.jsonl")
    out = tmp_path / "out"
    assert prepare_main(["--out_dir", str(out), "--sets", "olympiadbench,gsm8k", "--source_dir", str(src)]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["set"] for p in printed] == ["olympiadbench", "gsm8k"]
    assert sorted(os.listdir(out)) == ["gsm8k.parquet", "olympiadbench.parquet"]
    assert _gts(read_rows(str(out / "olympiadbench.parquet"))) == ["\\frac{1}{2}", "3, 5", "7", "2, -2"]
    assert prepare_main(["--out_dir", str(out), "--sets", "nope"]) == 2


def test_verl_rlhf_dataset_reads_all_files_together(prepared, tmp_path):
    """verl's own dataset class loads and concatenates every file (train + five eval sets)."""
    rl_dataset = pytest.importorskip("verl.utils.dataset.rl_dataset")
    from omegaconf import OmegaConf

    files = [str(prepared / md.OUTPUT_FILES[n]) for n in md.ALL_SETS]
    cfg = OmegaConf.create({"filter_overlong_prompts": False, "cache_dir": str(tmp_path / "cache")})
    ds = rl_dataset.RLHFDataset(files, tokenizer=None, config=cfg)
    assert len(ds) == 23
    item = ds[0]
    assert item["data_source"] == "hendrycks_math"
    assert item["raw_prompt"][0]["role"] == "user" and item["raw_prompt"][0]["content"].endswith(VERL_INSTRUCTION)
    assert item["reward_model"]["ground_truth"] == "\\frac{\\sqrt{3}}{2}"
    assert item["index"] == 0 and item["extra_info"]["split"] == "train"
    last = ds[len(ds) - 1]
    assert last["data_source"] == "olympiadbench" and last["index"] == 3
