"""The embedded default task: deterministic asset build, held-out validation, a warm start RL can improve.

Small stand-ins for the real assets (a 32-wide model, single-digit addition, a few dozen warm-start
steps) so the file runs in well under a minute; the real sizes are in conf/experiment/cpu_arithmetic.yaml.
"""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from omegaconf import OmegaConf

from recipe.gxpo.embedded import prepare_embedded_assets
from verl_ext.data import arithmetic as ar
from helpers.paths import REPO_ROOT

ROOT = str(REPO_ROOT)

SMALL_MODEL = dict(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128, seed=0)
SMALL_DATA = dict(n_train=256, n_val=20, max_operand=9, held_out=True, seed=0)
SMALL_WARM = dict(steps=300, batch_size=64, lr=1.0e-2, warmup_steps=20, label_smoothing=0.2, seed=0, num_threads=1)


def _config(root, version="vtest", warm=SMALL_WARM):
    return OmegaConf.create({
        "gxpo_embedded": {"dir": str(root), "version": version, "model": SMALL_MODEL, "data": SMALL_DATA, "warm_start": warm},
        "data": {"train_files": f"{root}/{version}/arithmetic/train.parquet", "val_files": f"{root}/{version}/arithmetic/val.parquet"},
        "actor_rollout_ref": {"model": {"path": f"{root}/{version}/tiny-qwen2-warm"}},
    })


def _digest(path):
    h = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.isfile(full) and not name.startswith("verl_ext_"):
            with open(full, "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("emb_a")
    cfg = _config(root)
    assert prepare_embedded_assets(cfg)  # something was built
    return cfg


def test_asset_build_is_deterministic_and_cached(built, tmp_path):
    cfg_b = _config(tmp_path)
    prepare_embedded_assets(cfg_b)
    a_model, b_model = built.actor_rollout_ref.model.path, cfg_b.actor_rollout_ref.model.path
    assert _digest(a_model) == _digest(b_model)  # weights, tokenizer, configs byte-identical
    assert _digest(os.path.dirname(built.data.train_files)) == _digest(os.path.dirname(cfg_b.data.train_files))
    assert _digest(a_model) != _digest(a_model + "-base")  # the warm start changed the weights
    assert prepare_embedded_assets(cfg_b) == []  # second call: everything reused
    # a changed build argument is not served from the stale cache
    changed = _config(tmp_path, warm=dict(SMALL_WARM, steps=SMALL_WARM["steps"] - 1))
    assert changed.actor_rollout_ref.model.path in prepare_embedded_assets(changed)


def test_train_and_validation_problems_are_disjoint(built):
    from verl_ext.data.rows import read_rows

    train = {r["prompt"][0]["content"] for r in read_rows(built.data.train_files)}
    val = [r["prompt"][0]["content"] for r in read_rows(built.data.val_files)]
    assert len(val) == len(set(val)) == SMALL_DATA["n_val"]
    assert not train & set(val)
    # the warm start's problems are the training pool: never a validation problem
    pool = {q for q, _ in ar.training_pool(**SMALL_DATA)}
    assert train <= pool and not pool & set(val)


def test_default_preset_validates_on_held_out_problems():
    """The shipped preset: held-out validation, disjoint from every problem the warm start or RL sees."""
    cfg = OmegaConf.load(os.path.join(ROOT, "conf", "experiment", "cpu_arithmetic.yaml"))
    data = OmegaConf.to_container(cfg.gxpo_embedded.data)
    assert data["held_out"] and data["n_val"] >= 100
    train, val = ar.make_arithmetic_rows(**data)
    val_q = {r["prompt"][0]["content"] for r in val}
    assert not val_q & {q for q, _ in ar.training_pool(**data)}
    assert not val_q & {r["prompt"][0]["content"] for r in train}
    version = cfg.gxpo_embedded.version  # versioned cache key: part of every asset path
    for path in (cfg.actor_rollout_ref.model.path, cfg.data.train_files, cfg.data.val_files):
        assert f"/{version}/" in path


# ---------------------------------------------------------------------------------------------
# a few GRPO steps: the warm start improves, a random model cannot
# ---------------------------------------------------------------------------------------------


def _encode(tok, question):
    enc = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True)
    return list(enc["input_ids"] if hasattr(enc, "keys") else enc)


def _expected_reward(model, tok, problems):
    """Mean probability of sampling exactly ``answer<|im_end|>`` at temperature 1 (teacher forcing)."""
    total = 0.0
    with torch.no_grad():
        for q, a in problems:
            p = _encode(tok, q)
            ans = tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            logits = model(torch.tensor([p + ans])).logits[0, len(p) - 1 : -1].float()
            total += logits.log_softmax(-1).gather(1, torch.tensor(ans)[:, None]).sum().exp().item()
    return total / len(problems)


def _grpo_steps(model, tok, problems, steps, lr=3e-4, n=8, prompts=8):
    """Plain GRPO on the arithmetic reward, update through the project's core rule."""
    from verl_ext.core.rules import build_update_rule
    from verl_ext.rewards.arithmetic_reward import compute_score

    params = [p for p in model.parameters() if p.requires_grad]
    rule = build_update_rule("grpo", params)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    rewards = []
    for step in range(steps):
        batch = [problems[(step * prompts + i) % len(problems)] for i in range(prompts)]
        seqs, adv = [], []
        model.eval()
        with torch.no_grad():
            for q, a in batch:
                p = _encode(tok, q)
                group = []
                for _ in range(n):
                    ids = list(p)
                    for _t in range(4):
                        probs = model(torch.tensor([ids])).logits[0, -1].float().softmax(-1)
                        tok_id = int(torch.multinomial(probs, 1, generator=gen))
                        ids.append(tok_id)
                        if tok_id == tok.eos_token_id:
                            break
                    text = tok.decode(ids[len(p):], skip_special_tokens=True)
                    group.append((p, ids[len(p):], compute_score("arithmetic", text, a)["score"]))
                r = torch.tensor([g[2] for g in group])
                rewards.append(r.mean().item())
                a_ = (r - r.mean()) / (r.std() + 1e-6)
                seqs += group
                adv += a_.tolist()
        model.train()

        def compute_grads():
            loss = 0.0
            for (p, resp, _), ad in zip(seqs, adv):
                logits = model(torch.tensor([p + resp])).logits[0, len(p) - 1 : -1]
                lp = logits.log_softmax(-1).gather(1, torch.tensor(resp)[:, None]).squeeze(1)
                loss = loss - ad * lp.sum() / (len(seqs) * 4)
            loss.backward()

        def optimizer_step():
            norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return norm

        opt.zero_grad(set_to_none=True)
        rule.step(compute_grads, optimizer_step)
    model.eval()
    return rewards


def test_warm_start_improves_under_grpo_and_random_model_does_not(built):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    problems = ar.training_pool(**SMALL_DATA)[:24]
    path = built.actor_rollout_ref.model.path
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    warm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    before = _expected_reward(warm, tok, problems)
    assert 0.05 < before < 0.8  # partial skill
    _grpo_steps(warm, tok, problems, steps=4)
    after = _expected_reward(warm, tok, problems)
    assert after > before + 0.02, (before, after)

    rand = AutoModelForCausalLM.from_pretrained(path + "-base", dtype=torch.float32, attn_implementation="sdpa")
    r_before = _expected_reward(rand, tok, problems)
    rewards = _grpo_steps(rand, tok, problems, steps=4)
    r_after = _expected_reward(rand, tok, problems)
    # almost never rewarded (a lucky digit now and then): no signal to learn from in a few steps
    assert r_before < 0.01 and sum(rewards) / len(rewards) < 0.05
    assert r_after < 0.01 and r_after - r_before < 0.005
