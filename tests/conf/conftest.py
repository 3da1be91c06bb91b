"""Fixtures of the Hydra config tests: one memoised composer of the recipe config."""

from __future__ import annotations

import copy
import io

import pytest
from helpers.paths import REPO_ROOT
from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = REPO_ROOT / "recipe" / "gxpo" / "config"
CONFIG_NAME = "gxpo_trainer"


@pytest.fixture(scope="module")
def compose():
    """compose(*overrides, hydra=False) -> DictConfig, memoised per override list.

    Hydra re-parses ~40 YAML files per compose with a pure-Python loader (~0.6 s); the parsed files
    are cached here (keyed by file name AND content) so the whole module stays well under 30 s.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    orig_load = OmegaConf.load
    parsed: dict = {}

    def cached_load(file_):
        name = getattr(file_, "name", None)
        if not isinstance(name, str) or not hasattr(file_, "read"):
            return orig_load(file_)
        text = file_.read()
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        key = (name, text)
        if key not in parsed:
            parsed[key] = orig_load(io.StringIO(text))
        return copy.deepcopy(parsed[key])

    results: dict = {}
    OmegaConf.load = staticmethod(cached_load)
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):

            def _compose(*overrides: str, hydra: bool = False) -> DictConfig:
                key = (overrides, hydra)
                if key not in results:
                    results[key] = hydra_compose(CONFIG_NAME, overrides=list(overrides), return_hydra_config=hydra)
                return results[key]

            yield _compose
    finally:
        OmegaConf.load = orig_load
