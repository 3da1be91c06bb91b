"""Tests of the HF-generate rollout backend (verl_ext.rollout.hf_rollout).

Engine tests run in-process (no Ray). The Ray tests start a local 2-CPU Ray, launch a real
``HFReplica`` server actor and drive it exactly as verl does: weights through
``HFServerAdapter.update_weights`` (the call ``ActorRolloutRefWorker.update_weights`` makes) and
generation through verl's ``LLMServerClient`` + load balancer (what the agent loop calls).
"""

from __future__ import annotations

import asyncio
import os

import pytest
import torch

pytest.importorskip("verl")

from omegaconf import OmegaConf  # noqa: E402

from verl_ext.models.tiny import build_tiny_model  # noqa: E402

PROMPT_LEN = 32
RESPONSE_LEN = 12


# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models generate ~10x faster single-threaded on a shared 2-core machine (as in the Ray
    server actor, where Ray sets OMP_NUM_THREADS=1)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(str(tmp_path_factory.mktemp("hf_rollout") / "tiny"), hidden_size=64, seed=0)


def _rollout_dict(**overrides):
    d = dict(
        _target_="verl.workers.config.RolloutConfig",
        name="hf",
        mode="async",
        prompt_length=PROMPT_LEN,
        response_length=RESPONSE_LEN,
        tensor_model_parallel_size=1,
        free_cache_engine=True,
        calculate_log_probs=True,
        max_num_seqs=64,
        checkpoint_engine=dict(
            _target_="verl.workers.config.CheckpointEngineConfig", backend="naive", update_weights_bucket_megabytes=1
        ),
    )
    d.update(overrides)
    return d


def _rollout_config(**overrides):
    from verl.utils.config import omega_conf_to_dataclass

    return omega_conf_to_dataclass(OmegaConf.create(_rollout_dict(**overrides)))


def _model_dict(path):
    return dict(path=path, override_config={"attn_implementation": "sdpa"})


@pytest.fixture(scope="module")
def model_config(model_dir):
    from verl.workers.config import HFModelConfig

    return HFModelConfig(**_model_dict(model_dir))


@pytest.fixture(scope="module")
def engine(model_config):
    from verl_ext.rollout.hf_rollout import HFGenerationEngine

    eng = HFGenerationEngine(_rollout_config(), model_config, seed=0)
    eng.load_model()
    # sharpen the random model (tiny init is near-uniform) so greedy / log-prob checks are meaningful
    eng.load_weights([(n, p.detach() * 4.0) for n, p in eng.model.named_parameters() if "norm" not in n])
    eng.finish_weight_update()
    return eng


def _prompt(model_config, text="12+30=?"):
    enc = model_config.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
    )
    return list(enc["input_ids"] if hasattr(enc, "keys") else enc)


def _dominant_token_weights(model, token_id: int, scale: float = 20.0):
    """Full state dict under which ``token_id`` is the argmax with probability ~1 at every position.

    All embeddings equal and attention/MLP outputs zero -> the final hidden state is the same
    constant vector everywhere; the LM-head row of ``token_id`` is aligned with it.
    """
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    hidden = sd["model.embed_tokens.weight"].shape[1]
    sd["model.embed_tokens.weight"] = torch.ones_like(sd["model.embed_tokens.weight"])
    for k in sd:
        if k.endswith("o_proj.weight") or k.endswith("down_proj.weight"):
            sd[k] = torch.zeros_like(sd[k])
    head = torch.zeros_like(sd["lm_head.weight"])
    head[token_id] = scale / hidden**0.5
    sd["lm_head.weight"] = head
    return sd


# ------------------------------------------------------------------------------------------------
# registration
# ------------------------------------------------------------------------------------------------


def test_registration_resolves_hf():
    from verl.workers.rollout.base import get_rollout_class
    from verl.workers.rollout.replica import RolloutReplicaRegistry, get_rollout_replica_class

    from verl_ext.rollout import is_hf_rollout_registered, register_hf_rollout
    from verl_ext.rollout.hf_rollout import HFReplica, HFServerAdapter

    register_hf_rollout()
    assert register_hf_rollout() is False  # idempotent
    assert is_hf_rollout_registered()
    assert get_rollout_class("hf", "async") is HFServerAdapter
    assert RolloutReplicaRegistry.get("hf") is HFReplica
    assert get_rollout_replica_class("hf") is HFReplica
    # verl's own backends are untouched
    assert "vllm" in RolloutReplicaRegistry._registry


# ------------------------------------------------------------------------------------------------
# engine (no Ray)
# ------------------------------------------------------------------------------------------------


def test_max_length_and_budget(engine, model_config):
    prompt = _prompt(model_config)
    reqs = [engine.make_request(prompt, dict(temperature=1.0, top_k=-1, top_p=1.0)) for _ in range(3)]
    reqs.append(engine.make_request(prompt, dict(temperature=1.0, max_tokens=3)))
    long_prompt = (prompt * 10)[: PROMPT_LEN + 5]  # over prompt_length: budget shrinks
    reqs.append(engine.make_request(long_prompt, dict(temperature=1.0)))
    assert reqs[-1].max_tokens == RESPONSE_LEN - 5
    out = engine.generate_batch(reqs)
    eos = set(engine.eos_ids)
    for r, o in zip(reqs, out, strict=True):
        assert 1 <= len(o.token_ids) <= r.max_tokens
        if len(o.token_ids) < r.max_tokens:
            assert o.token_ids[-1] in eos
        assert o.log_probs is None  # not asked for
    assert len(out[3].token_ids) <= 3


def test_greedy_is_deterministic_and_batch_invariant(engine, model_config):
    prompts = [_prompt(model_config, t) for t in ("1+1=?", "what is 17*3?", "x")]
    greedy = dict(temperature=0, top_k=-1, top_p=1.0, logprobs=True)
    single = [engine.generate_batch([engine.make_request(p, greedy)])[0] for p in prompts]
    torch.manual_seed(123)
    batched = engine.generate_batch([engine.make_request(p, greedy) for p in prompts])
    again = engine.generate_batch([engine.make_request(p, greedy) for p in prompts])
    for s, b, a in zip(single, batched, again, strict=True):
        assert s.token_ids == b.token_ids == a.token_ids
        torch.testing.assert_close(torch.tensor(s.log_probs), torch.tensor(b.log_probs), atol=1e-4, rtol=0)
    # top_k=1 sampling == greedy
    topk1 = engine.generate_batch([engine.make_request(p, dict(temperature=1.0, top_k=1)) for p in prompts])
    assert [o.token_ids for o in topk1] == [s.token_ids for s in single]
    # sampling at temperature 1 differs from greedy somewhere
    sampled = engine.generate_batch([engine.make_request(prompts[0], dict(temperature=1.0)) for _ in range(4)])
    assert any(o.token_ids != single[0].token_ids for o in sampled)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_forward_pass(engine, model_config, temperature):
    """processed_logprobs with top_k/top_p off == log_softmax(logits / T) of a plain forward pass,
    i.e. what the actor computes as old_log_probs."""
    prompt = _prompt(model_config)
    req = engine.make_request(prompt, dict(temperature=temperature, top_k=-1, top_p=1.0, logprobs=True))
    (out,) = engine.generate_batch([req, req])[:1]
    seq = torch.tensor([prompt + out.token_ids])
    with torch.no_grad():
        logits = engine.model(seq).logits[0, len(prompt) - 1 : -1].float()
    ref = (logits / temperature).log_softmax(-1).gather(1, torch.tensor(out.token_ids)[:, None]).squeeze(1)
    torch.testing.assert_close(torch.tensor(out.log_probs), ref, atol=1e-4, rtol=1e-4)


def test_top_k_top_p_restrict_support(engine, model_config):
    prompt = _prompt(model_config)
    n = 16
    out = engine.generate_batch(
        [engine.make_request(prompt, dict(temperature=1.0, top_k=2, logprobs=True, max_tokens=1)) for _ in range(n)]
    )
    with torch.no_grad():
        logits = engine.model(torch.tensor([prompt])).logits[0, -1]
    top2 = set(logits.topk(2).indices.tolist())
    assert {o.token_ids[0] for o in out} <= top2
    # processed log-probs are renormalised over the top-k support
    lp = (logits.topk(2).values).log_softmax(-1)
    for o in out:
        assert min(abs(o.log_probs[0] - v) for v in lp.tolist()) < 1e-4
    out = engine.generate_batch(
        [engine.make_request(prompt, dict(temperature=1.0, top_p=1e-6, max_tokens=1)) for _ in range(n)]
    )
    assert {o.token_ids[0] for o in out} == {int(logits.argmax())}


def test_eos_stops_generation(engine, model_config):
    eos = engine.eos_ids[0]
    sd = _dominant_token_weights(engine.model, eos)
    backup = {k: v.detach().clone() for k, v in engine.model.state_dict().items()}
    try:
        engine.load_weights(sd.items())
        out = engine.generate_batch([engine.make_request(_prompt(model_config), dict(temperature=1.0, logprobs=True))])
        assert out[0].token_ids == [eos] and out[0].finish == "eos"
        assert out[0].log_probs[0] > -1e-3
    finally:
        engine.load_weights(backup.items())


def test_load_format_dummy_vs_checkpoint(model_dir, model_config):
    """load_format=dummy (verl's default) builds random weights, replaced by the first weight sync;
    any other value loads model.path."""
    from transformers import AutoModelForCausalLM

    from verl_ext.rollout.hf_rollout import HFGenerationEngine

    ref = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    loaded = HFGenerationEngine(_rollout_config(load_format="auto"), model_config)
    loaded.load_model()
    for k, v in loaded.model.state_dict().items():
        torch.testing.assert_close(v, ref[k], msg=k)
    dummy = HFGenerationEngine(_rollout_config(load_format="dummy"), model_config, seed=1)
    dummy.load_model()
    assert not torch.equal(dummy.model.state_dict()["lm_head.weight"], ref["lm_head.weight"])
    copied, unknown = dummy.load_weights(list(ref.items()) + [("not.a.weight", torch.zeros(1))])
    assert unknown == ["not.a.weight"] and copied == len(ref)
    assert dummy.finish_weight_update() == []  # every parameter was synced
    for k, v in dummy.model.state_dict().items():
        torch.testing.assert_close(v, ref[k], msg=k)


# ------------------------------------------------------------------------------------------------
# adapter -> server -> engine, in-process (a stand-in for the Ray actor handle)
# ------------------------------------------------------------------------------------------------


class _LocalHandle:
    """Mimics a Ray actor handle: ``handle.method.remote(...)`` returns an awaitable."""

    def __init__(self, obj):
        self._obj = obj

    def __getattr__(self, name):
        method = getattr(self._obj, name)

        class _Remote:
            @staticmethod
            def remote(*args, **kwargs):
                return asyncio.ensure_future(method(*args, **kwargs))

        return _Remote


def test_adapter_update_weights_changes_samples_inprocess(model_dir, model_config):
    """update_weights (the call ActorRolloutRefWorker.update_weights makes on the rollout) reaches the
    server's model: after pushing weights that make one token dominant, that token is sampled."""
    from verl.workers.rollout.base import get_rollout_class
    from verl.workers.rollout.replica import RolloutMode

    from verl_ext.rollout import register_hf_rollout
    from verl_ext.rollout.hf_rollout import HFRolloutServer

    register_hf_rollout()
    prompt = _prompt(model_config)
    vocab = model_config.tokenizer.get_vocab()

    async def scenario():
        server = HFRolloutServer(
            config=_rollout_config(),
            model_config=OmegaConf.create(_model_dict(model_dir)),
            rollout_mode=RolloutMode.HYBRID,
        )
        await server.init_engine()
        adapter_cls = get_rollout_class("hf", "async")
        adapter = adapter_cls(config=_rollout_config(), model_config=model_config, device_mesh=None)
        adapter.server_handle = _LocalHandle(server)
        sp = dict(temperature=1.0, top_p=1.0, top_k=-1, repetition_penalty=1.0, logprobs=True)
        from transformers import AutoModelForCausalLM

        ref = AutoModelForCausalLM.from_pretrained(model_dir)
        for step, ch in enumerate("a7", start=1):
            tok = vocab[ch]
            await adapter.release()
            await adapter.resume(tags=["weights"])
            # a generator, like engine.get_per_tensor_param(); 1 MB buckets -> several bucket calls
            await adapter.update_weights((kv for kv in _dominant_token_weights(ref, tok).items()), global_steps=step)
            await adapter.resume(tags=["kv_cache"])
            outs = await asyncio.gather(
                *[server.generate(prompt_ids=prompt, sampling_params=dict(sp), request_id=str(i)) for i in range(4)]
            )
            for o in outs:
                assert o.token_ids == [tok] * RESPONSE_LEN, o.token_ids
                assert min(o.log_probs) > -1e-3 and o.extra_fields["global_steps"] == step
        stats = await server.get_stats()
        assert stats["weight_version"] == 2 and stats["max_batch"] == 4

    asyncio.run(scenario())


def test_abort_returns_partial_and_resume(model_dir, model_config):
    """abort_all_requests (partial-rollout protocol) stops the running batch: its rows come back
    with stop_reason='aborted' and their partial tokens; generation works again after resume."""
    from verl_ext.rollout.hf_rollout import HFRolloutServer

    cfg = _rollout_config(response_length=400, ignore_eos=True)

    async def scenario():
        server = HFRolloutServer(config=cfg, model_config=OmegaConf.create(_model_dict(model_dir)))
        await server.init_engine()
        prompt = _prompt(model_config)
        sp = dict(temperature=1.0, logprobs=True)
        task = asyncio.ensure_future(server.generate(prompt_ids=prompt, sampling_params=dict(sp)))
        while server._inflight == 0:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        await server.abort_all_requests()
        out = await task
        assert out.stop_reason == "aborted"
        assert 0 < len(out.token_ids) < 400 and len(out.log_probs) == len(out.token_ids)
        await server.resume_generation()
        out = await server.generate(prompt_ids=prompt, sampling_params=dict(sp, max_tokens=5))
        assert out.stop_reason == "completed" and len(out.token_ids) == 5

    asyncio.run(scenario())


# ------------------------------------------------------------------------------------------------
# Ray: real server actor + adapter weight sync + verl's LLMServerClient
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    started = False
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="test_hf_rollout")
        started = True
    yield ray
    if started:
        ray.shutdown()


@pytest.mark.slow
def test_server_samples_from_pushed_weights(ray_cluster, model_dir, model_config):
    """Push weights through HFServerAdapter.update_weights (the call verl's naive weight sync makes)
    and check that generation through verl's LLMServerClient samples from them."""
    from verl.workers.rollout.base import get_rollout_class
    from verl.workers.rollout.llm_server import LLMServerClient
    from verl.workers.rollout.replica import RolloutMode, RolloutReplicaRegistry
    from verl.workers.rollout.router import get_router_handle

    from verl_ext.rollout import register_hf_rollout

    register_hf_rollout()
    rollout_cfg = _rollout_dict()
    full_cfg = OmegaConf.create({"actor_rollout_ref": {"rollout": rollout_cfg, "model": _model_dict(model_dir)}})
    prompt = _prompt(model_config)
    vocab = model_config.tokenizer.get_vocab()
    tok_a, tok_b = vocab["a"], vocab["7"]

    async def scenario():
        replica = RolloutReplicaRegistry.get("hf")(
            replica_rank=0,
            config=full_cfg.actor_rollout_ref.rollout,
            model_config=full_cfg.actor_rollout_ref.model,
            gpus_per_node=1,
        )
        replica.rollout_mode = RolloutMode.HYBRID
        await replica.launch_servers()  # no worker group here: the server runs on this node, on CPU
        adapter = get_rollout_class("hf", "async")(
            config=_rollout_config(), model_config=model_config, device_mesh=None
        )
        assert adapter.is_leader_rank and adapter.replica_rank == 0
        lb = get_router_handle(servers={replica.server_address: replica.server_handle})
        client = LLMServerClient(config=full_cfg, load_balancer_handle=lb)

        async def sample(n, **params):
            sp = dict(temperature=1.0, top_p=1.0, top_k=-1, repetition_penalty=1.0, logprobs=True)
            sp.update(params)
            return await asyncio.gather(
                *[client.generate(f"r{i}", prompt_ids=prompt, sampling_params=dict(sp)) for i in range(n)]
            )

        from transformers import AutoModelForCausalLM

        ref = AutoModelForCausalLM.from_pretrained(model_dir)
        results = {}
        for step, tok in ((1, tok_a), (2, tok_b)):
            sd = _dominant_token_weights(ref, tok)
            await adapter.release()  # trainer: sleep_replicas() after sampling
            await adapter.resume(tags=["weights"])
            await adapter.update_weights(iter(sd.items()), global_steps=step)
            await adapter.resume(tags=["kv_cache"])
            outs = await sample(6)
            results[tok] = outs
            for o in outs:
                assert o.token_ids == [tok] * RESPONSE_LEN
                assert len(o.log_probs) == RESPONSE_LEN and min(o.log_probs) > -1e-3
                assert o.extra_fields["global_steps"] == step
        # greedy validation sampling (val_kwargs: temperature 0) and max_tokens through the client
        outs = await sample(2, temperature=0, max_tokens=4)
        assert all(o.token_ids == [tok_b] * 4 for o in outs)
        stats = await replica.server_handle.get_stats.remote()
        assert stats["weight_version"] == 2 and stats["requests"] == 14
        assert stats["max_batch"] > 1  # concurrent requests were batched
        # abort / resume round trip (partial-rollout protocol) leaves the server usable
        await replica.abort_all_requests()
        await replica.resume_generation()
        outs = await sample(1, max_tokens=2)
        assert outs[0].token_ids == [tok_b] * 2
        return stats

    asyncio.run(scenario())
