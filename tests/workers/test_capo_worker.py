"""CAPO's mask inside verl 0.9.1's real FSDP2 engine on CPU (tiny Qwen2): GRPO and GXPO update rules."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("verl")

from verl_ext.core.capo import CAPOConfig  # noqa: E402
from verl_ext.testing.cpu_worker import (  # noqa: E402
    _clone_td,
    build_cpu_actor_worker,
    compose_trainer_config,
    make_actor_update_batch,
    parameter_snapshot,
)
from verl_ext.workers.capo_loss import CAPOLoss, install_capo  # noqa: E402
from verl_ext.workers.training_worker import GXPOTrainingWorker  # noqa: E402


def _actor(model_path, rule="grpo", capo=None, overrides=(), **kw):
    ov = ["~experiment", f"actor_rollout_ref.actor.update_rule={rule}", "actor_rollout_ref.actor.gxpo.shutoff=never", *overrides]
    cfg = compose_trainer_config(
        model_path, config_module="recipe.gxpo.config", config_name="gxpo_trainer", mini_batch_size=4, lr=1e-3,
        overrides=ov, **kw,
    )
    torch.manual_seed(0)  # LoRA adapters are initialised randomly: same init for every actor
    actor = build_cpu_actor_worker(config=cfg, worker_cls=GXPOTrainingWorker)
    ac = actor.actor_config
    actor.worker.configure_update_rule(ac.update_rule, ac.gxpo, ac.sfpo)
    if capo is not None:
        assert isinstance(install_capo(actor.worker, capo, ac), CAPOLoss)
    return actor


def _scalar(v):
    return float(v[0]) if isinstance(v, list) else float(v)


def _assert_params(a, b, exact):
    pa, pb = parameter_snapshot(a.module), parameter_snapshot(b.module)
    for k in pa:
        if exact:
            assert torch.equal(pa[k], pb[k]), k
        else:
            torch.testing.assert_close(pa[k], pb[k], rtol=1e-5, atol=1e-7, msg=k)


@pytest.mark.parametrize("rule,model", [("grpo", "adam"), ("gxpo", "adam"), ("grpo", "sgd")])
def test_masking_nothing_reproduces_the_plain_update_exactly(model_path, rule, model):
    top_k = 50 if model == "adam" else 0
    never = CAPOConfig(enable=True, fisher_tau=1e30, hessian_tau=1e30, optimizer_model=model, top_k=top_k)
    a, b = _actor(model_path, rule, capo=never), _actor(model_path, rule)
    td = make_actor_update_batch(a, num_prompts=4, rollout_n=2, seed=3)
    steps = []
    a.worker.engine.optimizer.register_step_post_hook(lambda *_: steps.append(1))
    for _ in range(2):
        out_a = a.worker.train_mini_batch(_clone_td(td))
        out_b = b.worker.train_mini_batch(_clone_td(td))
    _assert_params(a, b, exact=True)
    wrapper = a.worker.loss_fn
    if model == "adam":  # the Adam model's moments advance once per optimizer step, on the rows seen
        assert wrapper.adam is not None and wrapper.adam.t == len(steps) > 0
        assert float(wrapper.adam.m.abs().sum()) > 0 and float(wrapper.adam.v.min()) >= 0
        assert _scalar(out_a["metrics"]["capo/adam_step"]) >= 1
    else:
        assert wrapper.adam is None
    # the masked fraction by advantage sign and by pi_a is logged (0 here: nothing is masked)
    assert any(k.startswith("capo/masked_frac_pi_") for k in out_a["metrics"])
    assert all(_scalar(v) == 0.0 for k, v in out_a["metrics"].items() if k.startswith("capo/masked_frac_"))
    ma, mb = out_a["metrics"], out_b["metrics"]
    assert ma["grad_norm"] == mb["grad_norm"]
    assert _scalar(ma["capo/masked_frac"]) == 0.0
    assert _scalar(ma["capo/kl_max"]) > 0.0 and _scalar(ma["capo/lr"]) == pytest.approx(1e-3)
    assert "capo/masked_frac" not in mb


def test_unstable_sequence_is_masked_and_update_equals_grpo_without_it(model_path):
    """One sequence gets a 1000x advantage: its tokens' predicted KL dwarfs all others', so a Fisher
    threshold between the two is crossed by exactly its tokens; the update must then equal GRPO
    where that sequence carries no policy gradient (same token normalisation)."""
    probe = _actor(model_path, capo=CAPOConfig(enable=True, fisher_tau=1e30, hessian_tau=0.0))
    td = make_actor_update_batch(probe, num_prompts=4, rollout_n=2, seed=5)
    kl_max_normal = _scalar(probe.worker.train_mini_batch(_clone_td(td))["metrics"]["capo/kl_max"])
    assert kl_max_normal > 0

    bad = 2
    td_bad = _clone_td(td)
    td_bad["advantages"][bad] = td_bad["advantages"][bad].sign() * 1000.0 + (td_bad["advantages"][bad] == 0) * 1000.0
    n_bad = int(td_bad["response_mask"][bad].sum())
    n_all = int(td_bad["response_mask"].sum())

    capo = _actor(model_path, capo=CAPOConfig(enable=True, fisher_tau=kl_max_normal * 10, hessian_tau=0.0))
    out = capo.worker.train_mini_batch(_clone_td(td_bad))
    m = out["metrics"]
    assert _scalar(m["capo/masked_frac"]) == pytest.approx(n_bad / n_all, rel=1e-6)
    assert _scalar(m["capo/masked_frac_fisher"]) == pytest.approx(n_bad / n_all, rel=1e-6)
    assert _scalar(m["capo/masked_frac_hessian"]) == 0.0

    ref = _actor(model_path)
    td_zero = _clone_td(td)
    td_zero["advantages"][bad] = 0.0
    ref.worker.train_mini_batch(_clone_td(td_zero))
    _assert_params(capo, ref, exact=False)

    # and without CAPO the 1000x sequence does move the weights differently
    plain = _actor(model_path)
    plain.worker.train_mini_batch(_clone_td(td_bad))
    pa, pr = parameter_snapshot(plain.module), parameter_snapshot(ref.module)
    assert any(not torch.allclose(pa[k], pr[k], rtol=1e-5, atol=1e-7) for k in pa)


def test_capo_with_lora_and_no_remove_padding(model_path):
    """The hook's layout handling for the padded (no rmpad) forward, with LoRA adapters."""
    never = CAPOConfig(enable=True, fisher_tau=1e30, hessian_tau=1e30)
    kw = dict(lora_rank=4, lora_alpha=8, use_remove_padding=False)
    a, b = _actor(model_path, capo=never, **kw), _actor(model_path, **kw)
    td = make_actor_update_batch(a, num_prompts=4, rollout_n=2, seed=7)
    out = a.worker.train_mini_batch(_clone_td(td))
    b.worker.train_mini_batch(_clone_td(td))
    _assert_params(a, b, exact=True)
    assert _scalar(out["metrics"]["capo/masked_frac"]) == 0.0 and _scalar(out["metrics"]["capo/kl_max"]) > 0


def test_actor_config_builds_and_validates_capo(model_path):
    from verl.utils.config import omega_conf_to_dataclass

    from verl_ext.core.config import ConfigError
    from verl_ext.workers.config import validate_actor_config

    cfg = compose_trainer_config(
        model_path, config_module="recipe.gxpo.config", config_name="gxpo_trainer",
        overrides=["~experiment", "method=capo"],
    )
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    assert isinstance(actor.capo, CAPOConfig) and actor.capo.enable and actor.update_rule == "grpo"
    bad = compose_trainer_config(
        model_path, config_module="recipe.gxpo.config", config_name="gxpo_trainer",
        overrides=["~experiment", "method=capo", "actor_rollout_ref.actor.capo.fisher_tau=-1"],
    )
    with pytest.raises(ConfigError) as e:
        validate_actor_config(bad.actor_rollout_ref.actor)
    assert e.value.key == "actor_rollout_ref.actor.capo.fisher_tau"


def test_adam_model_state_round_trips_through_a_checkpoint_directory(model_path, tmp_path):
    """A resumed run continues with the same Adam moments (saved beside the actor checkpoint)."""
    cfg = CAPOConfig(enable=True, fisher_tau=1e30, hessian_tau=1e30)
    a = _actor(model_path, capo=cfg)
    td = make_actor_update_batch(a, num_prompts=4, rollout_n=2, seed=3)
    a.worker.train_mini_batch(_clone_td(td))
    a.worker.loss_fn.save(str(tmp_path))
    b = _actor(model_path, capo=cfg)  # the same weights after the same step, its moments then lost
    b.worker.train_mini_batch(_clone_td(td))
    lost = b.worker.loss_fn.adam
    lost.m.zero_(), lost.v.zero_()
    lost.t = 0
    assert b.worker.loss_fn.load(str(tmp_path))
    assert b.worker.loss_fn.adam.t == a.worker.loss_fn.adam.t > 0
    assert torch.equal(b.worker.loss_fn.adam.m, a.worker.loss_fn.adam.m)
    assert torch.equal(b.worker.loss_fn.adam.v, a.worker.loss_fn.adam.v)
    out_a = a.worker.train_mini_batch(_clone_td(td))
    out_b = b.worker.train_mini_batch(_clone_td(td))
    assert _scalar(out_a["metrics"]["capo/kl_mean"]) == pytest.approx(_scalar(out_b["metrics"]["capo/kl_mean"]), rel=1e-6)
