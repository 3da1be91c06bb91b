"""Fixtures of the worker tests (verl's real FSDP2 engine on CPU)."""

from __future__ import annotations

import pytest
from helpers.proc_env import one_torch_thread


@pytest.fixture(autouse=True)
def _single_thread():
    """One intra-op thread per process: the two cores are shared by every process of a CPU run."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A tiny random Qwen2 with the local tokenizer, built once per test module."""
    from verl_ext.models.tiny import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("tiny") / "qwen2"))
