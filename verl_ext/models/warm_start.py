"""A short, deterministic supervised warm start for the embedded arithmetic task.

The paper starts RL from instruct models that already solve part of the task. The embedded CPU task
imitates that: :func:`supervised_warm_start` takes a random tiny model (:mod:`verl_ext.models.tiny`)
and trains it with plain next-token cross-entropy on ``prompt -> answer<|im_end|>`` pairs of the
training problems only (the validation problems are never seen), for a fixed, short budget. The
prompt is the exact token sequence verl's agent loop builds (the tokenizer's chat template with the
generation prompt), so the model meets the same inputs in RL. ``label_smoothing`` keeps the model
unsure: it answers correctly when decoding greedily far more often than when sampling at
temperature 1 -- the headroom that RL (sampled at temperature 1, validated at temperature 1) turns
into accuracy, as RL does for instruct models.

Determinism: the example order comes from ``random.Random(seed)``, the weights from the base model,
the optimizer is AdamW on CPU in float32 with ``torch.set_num_threads(num_threads)`` during the
build (restored afterwards). On one machine and torch build the result is bit-identical run to run
(the test compares weight hashes); across CPUs / torch versions / thread counts, floating-point
reduction order may differ, so bit-identity is not promised there.

Caching: the output directory holds a manifest (``verl_ext_warm_manifest.json``, written last) with
every argument, a hash of the problem list and the base model's manifest; a directory whose manifest
matches is reused as is, any other content of ours is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from typing import Sequence

from .publish import building

MANIFEST = "verl_ext_warm_manifest.json"
_BUILDER_VERSION = 1


def _problems_digest(problems: Sequence[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for q, a in problems:
        h.update(q.encode())
        h.update(b"\0")
        h.update(a.encode())
        h.update(b"\1")
    return h.hexdigest()


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_built(out_dir: str, manifest: dict) -> bool:
    """True when ``out_dir`` holds a finished build with exactly this manifest (its timing aside)."""
    found = _read_json(os.path.join(out_dir, MANIFEST))
    if not isinstance(found, dict):
        return False
    found.pop("seconds", None)
    return found == manifest and os.path.isfile(os.path.join(out_dir, "model.safetensors"))


def _encode(tokenizer, question: str, answer: str) -> tuple[list[int], list[int]]:
    """(prompt ids as verl's agent loop builds them, answer ids ending with EOS)."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True
    )
    if hasattr(prompt, "keys"):  # transformers 5 may return a BatchEncoding
        prompt = prompt["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return [int(t) for t in prompt], [int(t) for t in answer_ids]


def _batch(encoded: Sequence[tuple[list[int], list[int]]], pad: int):
    """(input ids, attention mask, labels) of prompt+answer rows, right-padded; labels only on the answer."""
    import torch

    n = len(encoded)
    length = max(len(p) + len(a) for p, a in encoded)
    ids = torch.full((n, length), pad, dtype=torch.long)
    labels = torch.full((n, length), -100, dtype=torch.long)
    mask = torch.zeros((n, length), dtype=torch.long)
    for row, (p, a) in enumerate(encoded):
        seq = p + a
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        labels[row, len(p) : len(seq)] = torch.tensor(a)
    return ids, mask, labels


def _train(base_dir: str, encoded, pad: int, *, steps: int, batch_size: int, lr: float, warmup_steps: int,
           label_smoothing: float, seed: int, num_threads: int, log_every: int):
    """The supervised run itself (see :func:`supervised_warm_start`); returns the trained model."""
    import torch
    from transformers import AutoModelForCausalLM

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(num_threads)))
    t0 = time.time()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="sdpa")
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
            rng = random.Random(seed)
            for step in range(1, steps + 1):
                for group in opt.param_groups:
                    group["lr"] = lr * min(1.0, step / max(1, warmup_steps))
                ids, mask, labels = _batch([encoded[rng.randrange(len(encoded))] for _ in range(batch_size)], pad)
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                    ignore_index=-100, label_smoothing=label_smoothing,
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                if log_every and step % log_every == 0:
                    print(f"[warm start] step {step}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)", flush=True)
    finally:
        torch.set_num_threads(threads)
    return model


def _publish(model, base_dir: str, out_dir: str, manifest: dict, seconds: float) -> None:
    """Write the model, the base model's tokenizer files and the manifest (last) to a temporary
    sibling directory, then rename it to ``out_dir`` (a half-written build is never found)."""
    with building(out_dir, prefix=".warm-") as tmp:
        model.eval()
        model.save_pretrained(tmp)
        for name in os.listdir(base_dir):  # tokenizer + generation config of the base model
            if name not in ("model.safetensors", "config.json", "verl_ext_tiny_manifest.json") and os.path.isfile(os.path.join(base_dir, name)):
                shutil.copy2(os.path.join(base_dir, name), os.path.join(tmp, name))
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
            json.dump(dict(manifest, seconds=round(seconds, 1)), f, indent=2, sort_keys=True)


def supervised_warm_start(
    base_dir: str,
    out_dir: str,
    problems: Sequence[tuple[str, str]],
    *,
    steps: int = 400,
    batch_size: int = 128,
    lr: float = 3.0e-3,
    warmup_steps: int = 50,
    label_smoothing: float = 0.0,
    seed: int = 0,
    num_threads: int = 1,
    log_every: int = 0,
) -> str:
    """Fine-tune the model at ``base_dir`` on ``problems`` (``(question, answer)`` strings) into ``out_dir``.

    ``steps`` AdamW steps (betas 0.9/0.98, no weight decay, gradient norm clipped at 1, linear warm-up
    over ``warmup_steps`` then constant ``lr``) on ``batch_size`` examples drawn with replacement by
    ``random.Random(seed)``; the loss covers the answer tokens and the EOS only. Returns the absolute
    ``out_dir``; see the module docstring for caching and determinism.
    """
    from transformers import AutoTokenizer

    if steps < 0 or batch_size < 1 or not problems:
        raise ValueError("need steps >= 0, batch_size >= 1 and at least one problem")
    base_dir = os.path.abspath(os.path.expanduser(base_dir))
    out_dir = os.path.abspath(os.path.expanduser(out_dir))
    args = dict(
        steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
        label_smoothing=label_smoothing, seed=seed, num_threads=num_threads,
    )
    manifest = {
        "builder": "verl_ext.models.warm_start",
        "version": _BUILDER_VERSION,
        "args": args,
        "problems": {"n": len(problems), "sha256": _problems_digest(problems)},
        "base": _read_json(os.path.join(base_dir, "verl_ext_tiny_manifest.json")),
    }
    if is_built(out_dir, manifest):
        return out_dir
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, MANIFEST)):
        raise ValueError(f"{out_dir} is not empty and was not built by supervised_warm_start; refusing to overwrite it")

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    encoded = [_encode(tokenizer, q, a) for q, a in problems]
    t0 = time.time()
    model = _train(base_dir, encoded, tokenizer.pad_token_id, log_every=log_every, **args)
    _publish(model, base_dir, out_dir, manifest, time.time() - t0)
    return out_dir
