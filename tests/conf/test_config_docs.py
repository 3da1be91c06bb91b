"""docs/configuration.md is generated from the config dataclasses and must match them."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest
from helpers.paths import REPO_ROOT

ROOT = REPO_ROOT


def _generator():
    spec = importlib.util.spec_from_file_location("gen_config_docs", ROOT / "tools" / "gen_config_docs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


def test_configuration_doc_is_up_to_date():
    gen = _generator()
    assert (ROOT / "docs" / "configuration.md").read_text() == gen.render(), (
        "docs/configuration.md is out of date with the config dataclasses: run python tools/gen_config_docs.py"
    )


def test_every_dataclass_field_has_a_row():
    gen = _generator()
    text = gen.render()
    for target, prefix, _ in gen.SECTIONS:
        _, cls = gen._load(target)
        assert f"## `{prefix}` ({cls.__name__})" in text
        for f in dataclasses.fields(cls):
            assert f"| `{f.name}` |" in text, f"{cls.__name__}.{f.name} missing from docs/configuration.md"


def test_attribute_docstrings_are_parsed():
    gen = _generator()
    docs = gen.field_docs_from_source(textwrap.dedent('''
        class Probe:
            """Probe summary."""

            K: int = 5
            """Lookahead depth:
            how far to predict.

            range: integer >= 2
            metric: gxpo/scale_mean
            """
            other: float = 1.0
            plain = 3
            """not a field"""
    '''))
    assert set(docs) == {"K"}
    assert docs["K"].meaning == "Lookahead depth: how far to predict."
    assert (docs["K"].range, docs["K"].metric) == ("integer >= 2", "gxpo/scale_mean")


def test_conf_readme_lists_every_option_of_every_group():
    """conf/README.md's option table is generated from conf/*/*.yaml and the recipe config's defaults."""
    gen = _generator()
    current = (ROOT / "conf" / "README.md").read_text()
    assert current == gen.render_conf_readme(current), (
        "conf/README.md's option table is out of date with conf/: run python tools/gen_config_docs.py"
    )
    table = current.split(gen.OPTIONS_BEGIN, 1)[1].split(gen.OPTIONS_END, 1)[0]
    for f in sorted((ROOT / "conf").glob("*/*.yaml")):
        assert f"| `{f.parent.name}` | `{f.stem}` |" in table, f"conf/README.md does not list {f.relative_to(ROOT)}"
    assert "`experiment`: `cpu_arithmetic`" in table  # the default experiment is not null


def test_conf_readme_generator_reads_a_new_option(tmp_path, monkeypatch):
    """A new option file shows up in the table with its first sentence; the default is marked."""
    gen = _generator()
    conf = tmp_path / "conf"
    (conf / "method").mkdir(parents=True)
    (conf / "method" / "mine.yaml").write_text("# @package _global_\n# My rule. More words.\n#\n# later\n")
    (conf / "method" / "base.yaml").write_text("# Base rule (Figs. 4-5) here.\n")
    recipe = tmp_path / "gxpo_trainer.yaml"
    recipe.write_text("defaults:\n  - ppo_trainer\n  - _self_\n  - method: base\n")
    monkeypatch.setattr(gen, "CONF_DIR", conf)
    monkeypatch.setattr(gen, "RECIPE_CONFIG", recipe)
    table = gen.render_options()
    assert "| `method` | `mine` |  | My rule. |" in table
    assert "| `method` | `base` | yes | Base rule (Figs. 4-5) here. |" in table
    assert "`method`: `base`" in table


def test_gxpo_keys_are_grouped_by_theme_with_the_source_of_each_default():
    """docs/configuration.md shows GXPO's keys under themes, each key once, and every GXPO/SFPO key
    says where its default comes from (the paper, the authors' code or script, or chosen here)."""
    gen = _generator()
    text = gen.render()
    gxpo = text.split("## `actor_rollout_ref.actor.gxpo`", 1)[1].split("\n## ", 1)[0]
    for theme in ("Extrapolation", "Retention ratio", "Shutoff gate", "Optimizer state and passes", "Faults",
                  "Memory and diagnostics"):
        assert f"\n### {theme}\n" in gxpo
    from verl_ext.core.config import GXPOConfig, SFPOConfig

    for cls in (GXPOConfig, SFPOConfig):
        docs = gen.field_docs(cls)
        no_source = [f.name for f in dataclasses.fields(cls) if not docs[f.name].source]
        assert not no_source, f"{cls.__name__} fields without a 'source:' line: {no_source}"
        for f in dataclasses.fields(cls):
            assert f"| {docs[f.name].source.replace('|', chr(92) + '|')} |" in text


def test_a_field_outside_every_theme_is_refused(monkeypatch):
    gen = _generator()
    from verl_ext.core.config import GXPOConfig

    themes = gen.THEMES["GXPOConfig"]
    monkeypatch.setitem(gen.THEMES, "GXPOConfig", themes[:-1])  # drops host_buffers / diagnose_every
    with pytest.raises(ValueError, match="unplaced \\['host_buffers', 'diagnose_every'\\]"):
        gen.themes_of(GXPOConfig)


def test_recipe_config_variant_alpha_is_written_from_the_variant_table(monkeypatch):
    """The recipe config's per-variant alpha map is generated from VARIANT_DEFAULTS, and follows it."""
    gen = _generator()
    recipe = (ROOT / "recipe" / "gxpo" / "config" / "gxpo_trainer.yaml").read_text()
    assert recipe == gen.render_recipe_config(recipe), (
        "recipe/gxpo/config/gxpo_trainer.yaml's _variant_alpha is out of date: run python tools/gen_config_docs.py"
    )
    import verl_ext.core.config as core_config

    monkeypatch.setitem(core_config.VARIANT_DEFAULTS, "alpha", (0.7, 0.25))
    assert "_variant_alpha: {paper_text: 0.7, authors: 0.25}" in gen.render_recipe_config(recipe)
