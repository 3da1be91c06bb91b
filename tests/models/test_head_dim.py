"""The embedded model with wider attention heads (verl_ext.models.head_dim) computes the same function."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("transformers")

from verl_ext.models.head_dim import head_dim_of, widen_heads  # noqa: E402
from verl_ext.models.tiny import build_tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def trained_like(tmp_path_factory):
    """The embedded base model's shape, with every weight (biases included) moved off its init."""
    from transformers import AutoModelForCausalLM

    path = build_tiny_model(str(tmp_path_factory.mktemp("m") / "tiny"), hidden_size=64, num_layers=2, num_heads=4,
                            num_kv_heads=2, intermediate_size=256)
    model = AutoModelForCausalLM.from_pretrained(path)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(path)
    return path


def test_widened_model_gives_the_same_logits(trained_like, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    wide = widen_heads(trained_like, str(tmp_path / "wide"), head_dim=32)
    assert head_dim_of(trained_like) == 16 and head_dim_of(wide) == 32
    a, b = AutoModelForCausalLM.from_pretrained(trained_like), AutoModelForCausalLM.from_pretrained(wide)
    assert type(b).__name__ == "LlamaForCausalLM"
    ids = torch.randint(0, 259, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        la, lb = a(ids).logits, b(ids).logits
    assert la.abs().max() > 1.0  # the check is not trivially passed by tiny logits
    torch.testing.assert_close(lb, la, atol=1e-4, rtol=1e-4)
    text = "<|im_start|>user\nWhat is 37+58?<|im_end|>\n"
    assert (AutoTokenizer.from_pretrained(wide)(text)["input_ids"]
            == AutoTokenizer.from_pretrained(trained_like)(text)["input_ids"])


def test_widened_model_is_reused_once_built(trained_like, tmp_path):
    out = str(tmp_path / "wide")
    widen_heads(trained_like, out)
    stamp = os.path.getmtime(os.path.join(out, "model.safetensors"))
    assert widen_heads(trained_like, out) == os.path.abspath(out)
    assert os.path.getmtime(os.path.join(out, "model.safetensors")) == stamp


def test_refuses_sizes_that_do_not_keep_the_rotary_pairs(trained_like, tmp_path):
    with pytest.raises(ValueError, match="multiple"):
        widen_heads(trained_like, str(tmp_path / "w"), head_dim=24)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        widen_heads(trained_like, str(foreign))
