"""Seeded sampling in the HF rollout engine (``rollout.full_determinism``): a seeded request's sample
depends on its seed and its own logits only -- not on batch partners, their order or the global RNG."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("verl")

from omegaconf import OmegaConf  # noqa: E402

from verl_ext.models.tiny import build_tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.config import HFModelConfig

    from verl_ext.rollout.hf_rollout import HFGenerationEngine

    path = build_tiny_model(str(tmp_path_factory.mktemp("seeding") / "tiny"), hidden_size=32, seed=0)
    cfg = omega_conf_to_dataclass(OmegaConf.create(dict(
        _target_="verl.workers.config.RolloutConfig", name="hf", mode="async", prompt_length=32,
        response_length=8, tensor_model_parallel_size=1, calculate_log_probs=True, max_num_seqs=64, seed=7,
        full_determinism=True,
    )))
    eng = HFGenerationEngine(cfg, HFModelConfig(path=path, override_config={"attn_implementation": "sdpa"}), seed=0)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    eng.load_model()
    # sharpen the near-uniform random model a little so samples are neither uniform nor constant
    eng.load_weights([(n, p.detach() * 3.0) for n, p in eng.model.named_parameters() if "norm" not in n])
    eng.finish_weight_update()
    yield eng
    torch.set_num_threads(previous)


def _prompt(engine, text):
    enc = engine.model_config.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
    )
    return list(enc["input_ids"] if hasattr(enc, "keys") else enc)


SAMPLING = dict(temperature=1.0, top_k=-1, top_p=1.0, logprobs=True)


def test_seeded_sample_ignores_batch_partners_order_and_global_rng(engine):
    prompts = [_prompt(engine, t) for t in ("3+4", "12+30", "99+1")]
    keys = [(0, f"det-{i}") for i in range(3)]
    torch.manual_seed(1)
    alone = [engine.generate_batch([engine.make_request(p, SAMPLING, seed_key=k)])[0] for p, k in zip(prompts, keys)]
    torch.manual_seed(2)
    filler = [engine.make_request(_prompt(engine, "a much longer prompt here"), SAMPLING) for _ in range(5)]
    reqs = [engine.make_request(p, SAMPLING, seed_key=k) for p, k in zip(prompts, keys)]
    mixed = engine.generate_batch([filler[0], reqs[2], *filler[1:3], reqs[0], filler[3], reqs[1], filler[4]])
    together = {2: mixed[1], 0: mixed[4], 1: mixed[6]}
    for i, a in enumerate(alone):
        assert together[i].token_ids == a.token_ids
        torch.testing.assert_close(torch.tensor(together[i].log_probs), torch.tensor(a.log_probs), atol=1e-4, rtol=0)


def test_seed_key_and_rollout_seed_change_the_sample(engine):
    prompt = _prompt(engine, "3+4")
    outs = engine.generate_batch([engine.make_request(prompt, SAMPLING, seed_key=(0, f"det-{i}")) for i in range(12)])
    assert len({tuple(o.token_ids) for o in outs}) > 1  # n samples of one prompt are different draws
    again = engine.generate_batch([engine.make_request(prompt, SAMPLING, seed_key=(0, f"det-{i}")) for i in range(12)])
    assert [o.token_ids for o in again] == [o.token_ids for o in outs]
    later = engine.generate_batch([engine.make_request(prompt, SAMPLING, seed_key=(1, f"det-{i}")) for i in range(12)])
    assert [o.token_ids for o in later] != [o.token_ids for o in outs]  # another training step: other draws


def test_seeded_rows_sample_from_the_processed_distribution(engine):
    """top-k=2 with one token: a seeded row never leaves the top-2 support, and both tokens occur."""
    prompt = _prompt(engine, "3+4")
    with torch.no_grad():
        logits = engine.model(torch.tensor([prompt])).logits[0, -1]
    top2 = set(logits.topk(2).indices.tolist())
    params = dict(temperature=1.0, top_k=2, logprobs=True, max_tokens=1)
    outs = engine.generate_batch([engine.make_request(prompt, params, seed_key=(0, f"det-{i}")) for i in range(40)])
    firsts = [o.token_ids[0] for o in outs]
    assert set(firsts) <= top2
    assert len(set(firsts)) == 2


def test_server_gives_repeated_ids_distinct_reproducible_samples(engine):
    """verl may send the n samples of a prompt with one request id: the server's occurrence count
    keeps them distinct draws, and the same sequence of requests gives the same samples again."""
    import asyncio

    from verl_ext.rollout.hf_rollout.server import HFRolloutServer

    server = HFRolloutServer.__new__(HFRolloutServer)  # no Ray: reuse the module's engine
    server.config = engine.config
    server.engine = engine
    server.global_steps = 3
    server._seen = {}
    server._seen_step = None
    server._queue = []
    server._wake = None
    server._allowed = None
    server._rejecting = False
    server._batcher = None
    server._inflight = 0
    server.batch_wait_s = 0.005
    server.max_wait_s = 0.05
    server.stats = {"requests": 0, "batches": 0, "tokens": 0, "generate_s": 0.0, "max_batch": 0}
    prompt = _prompt(engine, "3+4")

    async def group():
        server._wake = server._allowed = server._batcher = None  # fresh loop state per asyncio.run
        out = await asyncio.gather(*[server.generate(prompt, SAMPLING, request_id="det-0") for _ in range(8)])
        server._batcher.cancel()
        return out

    first = [tuple(o.token_ids) for o in asyncio.run(group())]
    assert len(set(first)) > 1
    server._seen_step = None  # a new run reaching the same step
    second = [tuple(o.token_ids) for o in asyncio.run(group())]
    assert sorted(second) == sorted(first)
