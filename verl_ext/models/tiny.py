"""Tiny random causal LMs with a local byte-level tokenizer, for tests and the default CPU job.

No hub access: the tokenizer is built with the ``tokenizers`` library and the model is a randomly
initialised ``Qwen2ForCausalLM`` (or ``LlamaForCausalLM``). The result is an ordinary Hugging Face
directory (``config.json``, ``generation_config.json``, ``model.safetensors``, ``tokenizer.json``,
``tokenizer_config.json`` with a ChatML ``chat_template``, ``special_tokens_map.json``) that
``AutoModelForCausalLM`` / ``AutoTokenizer`` and verl's ``HFModelConfig`` load from the local path.

Tokenizer: a byte-level BPE with the 256 byte symbols as its vocabulary and *no merges*, so every
byte (every ASCII character: digits, ``+ - * = ( )``, spaces, letters, punctuation, ``\\boxed{}``)
is one token and nothing is ever unknown; then ``<|endoftext|>`` (pad), ``<|im_start|>`` and
``<|im_end|>`` (eos). Its pipeline (NFC, Qwen2's split regex, ByteLevel) is the one transformers 5
hard-wires into ``Qwen2Tokenizer`` -- ``AutoTokenizer`` always builds that class for
``model_type=qwen2`` and keeps only the vocab/merges of ``tokenizer.json`` -- so the directory
tokenises identically whether it is loaded as ``Qwen2Tokenizer`` or as a generic fast tokenizer
(``arch='llama'``).

``build_tiny_model`` is deterministic given its arguments and caches: a manifest
(``verl_ext_tiny_manifest.json``, written last) records the arguments; a directory whose manifest
matches and whose files are all present is returned as is.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

MANIFEST = "verl_ext_tiny_manifest.json"
_BUILDER_VERSION = 2

PAD_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)

# transformers 5's Qwen2Tokenizer pre-tokenisation regex (same as Qwen2's tokenizer.json)
_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes 0..255, in byte order.

    Printable Latin-1 bytes stand for themselves; the others (control bytes, space, ...) are
    shifted to code points from 256 up, in byte order (so space is ``'Ġ'``, newline ``'Ċ'``).
    """
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    out, shift = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + shift))
            shift += 1
    return out


def tokenizer_vocab() -> dict[str, int]:
    """Byte symbols 0..255 (id = byte value), then <|endoftext|>=256, <|im_start|>=257, <|im_end|>=258."""
    vocab = {sym: i for i, sym in enumerate(byte_symbols())}
    for tok in SPECIAL_TOKENS:
        vocab[tok] = len(vocab)
    return vocab


def build_tokenizer(out_dir: str, model_max_length: int = 512) -> None:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` into ``out_dir``."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab = tokenizer_vocab()
    byte_vocab = {t: i for t, i in vocab.items() if t not in SPECIAL_TOKENS}
    tok = Tokenizer(models.BPE(vocab=byte_vocab, merges=[], continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL_TOKENS])
    assert all(tok.token_to_id(t) == i for t, i in vocab.items())
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))

    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "bos_token": None,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": None,
        "additional_special_tokens": [BOS_TOKEN],
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "split_special_tokens": False,
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {
            str(vocab[s]): {
                "content": s,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for s in SPECIAL_TOKENS
        },
    }
    _write_json(os.path.join(out_dir, "tokenizer_config.json"), tokenizer_config)
    _write_json(
        os.path.join(out_dir, "special_tokens_map.json"),
        {"eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN, "additional_special_tokens": [BOS_TOKEN]},
    )


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")


def _make_config(*, arch: str, **kw):
    vocab = tokenizer_vocab()
    common = dict(
        vocab_size=kw["vocab_size"],
        hidden_size=kw["hidden_size"],
        intermediate_size=kw["intermediate_size"],
        num_hidden_layers=kw["num_layers"],
        num_attention_heads=kw["num_heads"],
        num_key_value_heads=kw["num_kv_heads"],
        max_position_embeddings=kw["max_position_embeddings"],
        tie_word_embeddings=kw["tie_word_embeddings"],
        rms_norm_eps=1e-6,
        initializer_range=0.02,
        hidden_act="silu",
        bos_token_id=vocab[BOS_TOKEN],
        eos_token_id=vocab[EOS_TOKEN],
        pad_token_id=vocab[PAD_TOKEN],
        use_cache=True,
    )
    if arch == "qwen2":
        from transformers import Qwen2Config

        return Qwen2Config(**common, rope_theta=10000.0, use_sliding_window=False)
    if arch == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(**common, rope_theta=10000.0, attention_bias=False, mlp_bias=False)
    raise ValueError(f"arch must be 'qwen2' or 'llama', got {arch!r}")


def _is_complete(out_dir: str, manifest: dict) -> bool:
    path = os.path.join(out_dir, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            existing = json.load(f)
    except (OSError, ValueError):
        return False
    return existing == manifest and all(os.path.isfile(os.path.join(out_dir, name)) for name in _FILES)


def build_tiny_model(
    out_dir: str,
    *,
    vocab_size: int | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    arch: str = "qwen2",
) -> str:
    """Write a tiny random causal LM plus a local tokenizer to ``out_dir``; return its absolute path.

    ``vocab_size`` defaults to the tokenizer size (259) rounded up to a multiple of 64 (320); it
    must be at least the tokenizer size. Weights are float32. With the defaults the Qwen2 model has
    ~115k parameters. Building takes well under a second; an existing directory built with the same
    arguments is reused without rebuilding. A non-empty ``out_dir`` that was not built here is
    never overwritten (``ValueError``).
    """
    import torch

    n_tok = len(tokenizer_vocab())
    if vocab_size is None:
        vocab_size = -(-n_tok // 64) * 64
    if vocab_size < n_tok:
        raise ValueError(f"vocab_size={vocab_size} is smaller than the tokenizer ({n_tok} tokens)")
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError("hidden_size must divide by num_heads and num_heads by num_kv_heads")
    arch = arch.lower()
    args = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        seed=seed,
        arch=arch,
    )
    manifest = {"builder": "verl_ext.models.tiny", "version": _BUILDER_VERSION, "args": args}
    out_dir = os.path.abspath(os.path.expanduser(out_dir))
    if _is_complete(out_dir, manifest):
        return out_dir
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, MANIFEST)):
        raise ValueError(f"{out_dir} is not empty and was not built by build_tiny_model; refusing to overwrite it")

    config = _make_config(**args)

    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tiny-", dir=parent)
    os.chmod(tmp, 0o755)
    try:
        from transformers import AutoModelForCausalLM, GenerationConfig

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.eval()
        model.save_pretrained(tmp)
        GenerationConfig(
            bos_token_id=config.bos_token_id,
            eos_token_id=config.eos_token_id,
            pad_token_id=config.pad_token_id,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
        ).save_pretrained(tmp)
        build_tokenizer(tmp, model_max_length=max_position_embeddings)
        _write_json(os.path.join(tmp, MANIFEST), manifest)

        # Publish: replace a stale directory of ours, or move into place.
        if os.path.isdir(out_dir):
            if _is_complete(out_dir, manifest):  # built concurrently by someone else
                return out_dir
            shutil.rmtree(out_dir)
        try:
            os.rename(tmp, out_dir)
            tmp = None
        except OSError:
            if not _is_complete(out_dir, manifest):
                raise
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
