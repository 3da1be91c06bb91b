"""Report / compare rows are labelled by accelerator recipe: CAPO's three author recipes and its SGD
ablation, NExt as its authors run it and the online variant -- from configs, overrides and names."""

from __future__ import annotations

import pytest

from launch import runmeta


@pytest.mark.parametrize("method,accel,title", [
    ("capo", "capo", "CAPO+GRPO"), ("capo_dr", "capo_dr", "Dr.CAPO+GRPO"), ("capo_rein", "capo_rein", "ReinCAPO+GRPO"),
    ("capo_sgd", "capo_sgd", "CAPO[SGD]+GRPO"), ("next", "next", "NExt (LoRA GRPO)"),
])
def test_method_presets_label_their_recipe(method, accel, title):
    meta = runmeta.meta_from_overrides([f"method={method}"])
    assert meta == {"method": "grpo", "accel": accel}
    assert runmeta.method_title("grpo", None, accel) == title
    assert runmeta.meta_from_name(f"compare_{method}_s2") == {"method": "grpo", "accel": accel, "seed": 2}


def test_next_online_mode_is_its_own_label():
    assert runmeta.meta_from_overrides(["method=next", "actor_rollout_ref.actor.next.mode=online"])["accel"] == "next_online"
    cfg = {"actor_rollout_ref": {"actor": {"update_rule": "grpo", "next": {"enable": True, "mode": "online"}}}}
    assert runmeta.meta_from_config(cfg)["accel"] == "next_online"
    cfg["actor_rollout_ref"]["actor"]["next"]["mode"] = "authors"
    assert runmeta.meta_from_config(cfg)["accel"] == "next"


@pytest.mark.parametrize("capo,label", [
    ({"optimizer_model": "adam", "fisher_tau": 1e-4, "hessian_tau": 0.01}, "capo"),
    ({"optimizer_model": "adam", "fisher_tau": 1e-3, "hessian_tau": 5e-4}, "capo_dr"),
    ({"optimizer_model": "adam", "fisher_tau": 1e-5, "hessian_tau": 0.1}, "capo_rein"),
    ({"optimizer_model": "sgd", "fisher_tau": 1e-3, "hessian_tau": 5e-4}, "capo_sgd"),
    ({"optimizer_model": "adam", "fisher_tau": 2e-4, "hessian_tau": 0.01}, "capo"),  # custom thresholds
])
def test_full_config_without_a_method_name_is_labelled_by_its_settings(capo, label):
    cfg = {"actor_rollout_ref": {"actor": {"update_rule": "grpo", "capo": {"enable": True, **capo}}}}
    assert runmeta.meta_from_config(cfg)["accel"] == label
    cfg["gxpo_run"] = {"method": "capo_rein"}  # the method name wins when the config has it
    assert runmeta.meta_from_config(cfg)["accel"] == "capo_rein"
