"""The project's Hydra config groups (conf/) compose with the recipe config and say what the paper says.

Compose only: nothing here starts Ray, builds a model or instantiates the GXPO actor config (the
actor ``_target_`` is swapped back to verl's ``FSDPActorConfig`` where verl's own validation runs).

Groups (selected without "+", all default to nothing):
    base_model=qwen2.5-1.5b|qwen2.5-3b|qwen2.5-7b|llama3.2-3b
    experiment=paper_math|paper_math_debug
    method=grpo|sfpo_k{3,5,10}|gxpo_k{3,5,10}
    sweep=gxpo_k_alpha|methods|table1          (with -m)
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import io
import itertools
import sys
import types
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf, open_dict
from helpers.paths import REPO_ROOT
from verl_ext.core.config import GXPOConfig, SFPOConfig

REPO = REPO_ROOT
CONFIG_DIR = REPO / "recipe" / "gxpo" / "config"
CONF_DIR = REPO / "conf"
CONFIG_NAME = "gxpo_trainer"

pytestmark = pytest.mark.filterwarnings("ignore:Disabled critic:UserWarning")

if importlib.util.find_spec("conf") is None:  # `pkg://conf` needs the package importable
    sys.path.insert(0, str(REPO))

# What the paper's method rows mean (update_rule, K, alpha); alpha values are the dataclass defaults (docs/algorithm.md#variants)
# (the paper's were lost in extraction).
_SFPO_ALPHA = SFPOConfig().alpha
PAPER_METHODS = {
    "grpo": ("grpo", None, None),
    "sfpo_k3": ("sfpo", 3, _SFPO_ALPHA),
    "sfpo_k5": ("sfpo", 5, _SFPO_ALPHA),
    "sfpo_k10": ("sfpo", 10, _SFPO_ALPHA),
    "gxpo_k3": ("gxpo", 3, 1.0),
    "gxpo_k5": ("gxpo", 5, 1.0),
    "gxpo_k10": ("gxpo", 10, 1.0),
}
PAPER_MODELS = {
    "qwen2.5-1.5b": "Qwen/Qwen2.5-1.5B-Instruct",
    "qwen2.5-3b": "Qwen/Qwen2.5-3B-Instruct",
    "qwen2.5-7b": "Qwen/Qwen2.5-7B-Instruct",
    "llama3.2-3b": "meta-llama/Llama-3.2-3B-Instruct",
}
LORA_MODELS = {"qwen2.5-7b"}
# Keys a method preset may set; everything else must be identical across methods.
METHOD_KEYS = [
    ("actor_rollout_ref", "actor", "update_rule"),
    ("actor_rollout_ref", "actor", "gxpo"),
    ("actor_rollout_ref", "actor", "sfpo"),
    ("gxpo_run", "method"),
]
VERL_CONFIG_DIR = Path(importlib.util.find_spec("verl").submodule_search_locations[0]) / "trainer" / "config"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


BASE_MODELS = _options("base_model")
# the paper's method rows; the other accelerators (CAPO, NExt) have their own compose tests
EXTRA_METHODS = {"capo", "capo_dr", "capo_rein", "capo_sgd", "capo_gxpo_k5", "next"}
METHODS = sorted(PAPER_METHODS)
MATRIX = list(itertools.product(BASE_MODELS, METHODS))


# --------------------------------------------------------------------------------------------------
# Composition helpers
# --------------------------------------------------------------------------------------------------


def _paper(compose, base_model: str, method: str) -> DictConfig:
    return compose("experiment=paper_math", f"base_model={base_model}", f"method={method}")


def _drop(container: dict, path: tuple[str, ...]) -> None:
    node = container
    for part in path[:-1]:
        node = node.get(part, {})
    node.pop(path[-1], None)


def _leaves(node, prefix=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, prefix + (k,))
    else:
        yield prefix, node


# --------------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------------


def test_group_options_exist():
    assert set(BASE_MODELS) == set(PAPER_MODELS)
    assert set(_options("method")) - set(PAPER_METHODS) == EXTRA_METHODS
    assert {"paper_math", "paper_math_debug"} <= set(_options("experiment"))
    assert {"gxpo_k_alpha", "methods", "table1"} <= set(_options("sweep"))


def test_group_names_do_not_collide_with_verl_groups():
    ours = {p.name for p in CONF_DIR.iterdir() if p.is_dir() and not p.name.startswith("_")}
    verls = {p.name for p in VERL_CONFIG_DIR.iterdir() if p.is_dir() and not p.name.startswith("_")}
    verls |= {p.stem for p in VERL_CONFIG_DIR.glob("*.yaml")}
    assert ours >= {"base_model", "experiment", "method", "sweep"}
    assert not ours & verls, f"conf/ group names shadow verl config entries: {ours & verls}"


def test_every_group_file_is_global_package():
    for path in CONF_DIR.glob("*/*.yaml"):
        assert path.read_text().startswith("# @package _global_"), path


# --------------------------------------------------------------------------------------------------
# The main config alone
# --------------------------------------------------------------------------------------------------


def test_main_config_without_groups_keeps_its_own_values(compose):
    cfg = compose("~experiment")
    actor = cfg.actor_rollout_ref.actor
    assert actor._target_ == "verl_ext.workers.config.GXPOActorConfig"
    assert actor.strategy == "fsdp2"
    assert actor.update_rule == "gxpo"
    assert (actor.gxpo.K, actor.gxpo.alpha, actor.gxpo.shutoff) == (5, 1.0, "adaptive")
    # the variant knobs are null in the YAML (= the variant's default); resolved they are the variant table's
    from verl_ext.core.config import GXPOConfig, build_config

    gx = build_config(GXPOConfig, OmegaConf.to_container(actor.gxpo, resolve=True), "gxpo.")
    assert (gx.variant, gx.window, gx.warmup, gx.z_threshold) == ("paper_text", 20, 10, 3.0)
    assert (gx.ratio_min, gx.ratio_max) == (0.0, 1.0)
    # SFPO's defaults are the dataclass's; the YAML carries every key (generated from it), so a dotted
    # override composes without `+`
    from verl_ext.core.config import SFPOConfig

    sf = build_config(SFPOConfig, OmegaConf.to_container(actor.sfpo, resolve=True), "sfpo.")
    assert sf == SFPOConfig() and actor.sfpo.alpha == SFPOConfig().alpha
    assert set(actor.sfpo) == {f.name for f in dataclasses.fields(SFPOConfig)}
    assert compose("~experiment", "actor_rollout_ref.actor.sfpo.K=5").actor_rollout_ref.actor.sfpo.K == 5
    # nothing from conf/ leaked in: verl's own defaults stand
    assert "gxpo_run" not in cfg
    assert cfg.trainer.total_training_steps is None
    assert cfg.algorithm.adv_estimator == "gae"
    assert OmegaConf.is_missing(cfg.actor_rollout_ref.rollout, "name")


def test_default_is_the_embedded_cpu_task_and_paper_math_replaces_it(compose):
    cfg = compose()
    assert cfg.actor_rollout_ref.rollout.name == "hf"
    assert cfg.reward.custom_reward_function.path == "pkg://verl_ext.rewards.arithmetic_reward"
    assert cfg.actor_rollout_ref.model.path.endswith("/tiny-qwen2-warm")  # the warm-started model
    assert cfg.trainer.v1.trainer_mode == "gxpo_sync"
    paper = compose("experiment=paper_math", "base_model=qwen2.5-1.5b")
    assert "gxpo_embedded" not in paper  # nothing of the CPU preset leaks into GPU runs
    assert paper.actor_rollout_ref.rollout.name == "vllm"
    assert paper.ray_kwargs.ray_init.get("num_gpus") is None
    assert paper.transfer_queue.backend.SimpleStorage.num_data_storage_units == 8
    assert paper.trainer.v1.trainer_mode == "gxpo_sync"


@pytest.mark.parametrize("override", ["base_model=qwen2.5-7b", "method=sfpo_k3", "experiment=paper_math"])
def test_each_group_alone_composes_without_plus(compose, override):
    cfg = compose(override)
    assert cfg.actor_rollout_ref.actor.update_rule in ("grpo", "sfpo", "gxpo")


# --------------------------------------------------------------------------------------------------
# experiment=paper_math x base_model x method
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("base_model,method", MATRIX)
def test_matrix_composes_to_the_paper_setting(compose, base_model, method):
    cfg = _paper(compose, base_model, method)
    arr = cfg.actor_rollout_ref
    actor, rollout, model = arr.actor, arr.rollout, arr.model

    # method
    rule, K, alpha = PAPER_METHODS[method]
    assert actor.update_rule == rule
    if rule != "grpo":
        assert (actor[rule].K, actor[rule].alpha, actor[rule].shutoff) == (K, alpha, "adaptive")

    # model
    assert model.path == PAPER_MODELS[base_model]
    assert model.enable_gradient_checkpointing is True
    if base_model in LORA_MODELS:
        assert model.lora_rank > 0 and model.lora_alpha > 0
        assert sorted(model.target_modules) == ["k_proj", "o_proj", "q_proj", "v_proj"]
        assert rollout.load_format == "safetensors"
    else:
        assert model.lora_rank == 0
        assert rollout.load_format == "dummy"
    assert actor.fsdp_config.param_offload is False and actor.fsdp_config.optimizer_offload is False

    # shared paper setting
    assert cfg.algorithm.adv_estimator == "grpo"
    assert rollout.name == "vllm"
    assert actor.strategy == "fsdp2"
    assert actor.optim.clip_grad == 1.0 and actor.optim.lr == 1e-6
    assert actor.clip_ratio == 0.2
    assert (actor.use_kl_loss, actor.kl_loss_coef, actor.kl_loss_type) == (True, 0.001, "low_var_kl")
    assert cfg.algorithm.use_kl_in_reward is False
    assert actor.fsdp_config.dtype == "bfloat16" and rollout.dtype == "bfloat16"
    assert model.override_config.attn_implementation == "flash_attention_2"
    assert cfg.trainer.total_training_steps == 300
    assert (cfg.trainer.n_gpus_per_node, cfg.trainer.nnodes) == (4, 1)
    assert list(cfg.trainer.logger) == ["console", "wandb"]
    assert actor.ppo_mini_batch_size == cfg.data.train_batch_size  # one update per step
    assert actor.ppo_epochs == 1
    vk = rollout.val_kwargs
    assert (vk.temperature, vk.top_p, vk.do_sample) == (1.0, 1.0, True) and vk.n >= 16
    assert cfg.reward.custom_reward_function.path == "pkg://verl_ext.rewards.math_reward"
    assert cfg.reward.custom_reward_function.name == "compute_score"
    assert cfg.data.train_files.endswith("/data/gxpo_math/train.parquet")
    assert [Path(f).name for f in cfg.data.val_files] == [
        f"{n}.parquet" for n in ("math500", "amc23", "gsm8k", "minerva", "olympiadbench")
    ]
    assert "~" not in cfg.data.train_files  # HF datasets does not expand "~"
    # sequence budget fits at least one full-length sequence
    seq = cfg.data.max_prompt_length + cfg.data.max_response_length
    assert actor.ppo_max_token_len_per_gpu >= seq and rollout.log_prob_max_token_len_per_gpu >= seq


def test_methods_differ_only_in_update_rule_keys(compose):
    for base_model in BASE_MODELS:
        shared = []
        for method in METHODS:
            c = OmegaConf.to_container(_paper(compose, base_model, method), resolve=False)
            for path in METHOD_KEYS:
                _drop(c, path)
            shared.append(c)
        for method, c in zip(METHODS[1:], shared[1:]):
            assert c == shared[0], f"{base_model}: method={method} changes more than the update-rule keys"


def test_run_names_are_unique_and_parseable(compose):
    names = {}
    for base_model, method in MATRIX:
        cfg = _paper(compose, base_model, method)
        names[(base_model, method)] = cfg.trainer.experiment_name
        assert cfg.trainer.default_local_dir.endswith(cfg.trainer.experiment_name)
    assert len(set(names.values())) == len(MATRIX)
    assert names[("qwen2.5-1.5b", "gxpo_k5")] == "paper_math_qwen2.5-1.5b_gxpo_k5_a1.0_s1"
    assert names[("llama3.2-3b", "sfpo_k10")] == "paper_math_llama3.2-3b_sfpo_k10_a0.8_s1"
    assert names[("qwen2.5-7b", "grpo")] == "paper_math_qwen2.5-7b_grpo_s1"
    # a dotted override of K/alpha after the preset is reflected in the name
    cfg = compose("experiment=paper_math", "base_model=qwen2.5-3b", "method=gxpo_k5", "actor_rollout_ref.actor.gxpo.alpha=0.5")
    assert cfg.trainer.experiment_name == "paper_math_qwen2.5-3b_gxpo_k5_a0.5_s1"


def test_group_files_only_set_keys_verl_knows(compose):
    """Every key a group file sets must already exist in verl's tree (typos would otherwise be
    silently added), except the project's own keys and free-form dicts."""
    base = OmegaConf.to_container(compose(), resolve=False)
    own_prefixes = [("gxpo_run",), ("gxpo_embedded",), ("hydra",), ("defaults",),
                    ("actor_rollout_ref", "actor", "capo"), ("actor_rollout_ref", "actor", "next")]
    free_form = [
        ("actor_rollout_ref", "model", "override_config"),
        ("ray_kwargs", "ray_init"),  # ray.init(**kwargs): free-form
        ("trainer", "v1", "sync"),  # verl's per-mode dict; poll_interval is read by the gxpo_sync trainer
    ]
    for path in CONF_DIR.glob("*/*.yaml"):
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        for key, _ in _leaves(data):
            if any(key[: len(p)] == p for p in own_prefixes + free_form):
                continue
            if key[:3] in (("actor_rollout_ref", "actor", "sfpo"), ("actor_rollout_ref", "actor", "gxpo")):
                # the rule sections hold only what the YAML needs; their keys are the dataclasses' fields
                cls = SFPOConfig if key[2] == "sfpo" else GXPOConfig
                assert len(key) == 4 and key[3] in {f.name for f in dataclasses.fields(cls)}, (
                    f"{path.name}: unknown key {'.'.join(key)}")
                continue
            node = base
            for part in key:
                assert isinstance(node, dict) and part in node, f"{path.name}: unknown key {'.'.join(key)}"
                node = node[part]


# --------------------------------------------------------------------------------------------------
# verl's own validation of the composed configs
# --------------------------------------------------------------------------------------------------


def _validate_with_verl(cfg: DictConfig, monkeypatch) -> None:
    """Run verl.utils.config.validate_config on a copy, with the actor as verl's FSDPActorConfig."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    cfg = copy.deepcopy(cfg)
    OmegaConf.set_struct(cfg, False)
    actor = cfg.actor_rollout_ref.actor
    actor._target_ = "verl.workers.config.FSDPActorConfig"
    for k in ("update_rule", "gxpo", "sfpo", "capo", "next"):  # the project's keys
        actor.pop(k)
    # validate_config imports vllm for the LoRA rank check; this machine has no vllm
    stub = types.ModuleType("verl.workers.rollout.vllm_rollout.utils")

    def get_vllm_max_lora_rank(rank):
        allowed = [1, 8, 16, 32, 64, 128, 256, 320, 512]
        assert 0 < rank <= allowed[-1]
        return next(r for r in allowed if rank <= r)

    stub.get_vllm_max_lora_rank = get_vllm_max_lora_rank
    monkeypatch.setitem(sys.modules, stub.__name__, stub)
    assert need_reference_policy(cfg) and not need_critic(cfg)
    validate_config(cfg, use_reference_policy=True, use_critic=False)
    # dynamic batching off must also be valid (micro-batch fall-backs are set per model)
    cfg.actor_rollout_ref.actor.use_dynamic_bsz = False
    validate_config(cfg, use_reference_policy=True, use_critic=False)


@pytest.mark.parametrize("base_model", BASE_MODELS)
def test_verl_validate_config_accepts_paper_math(compose, base_model, monkeypatch):
    cfg = _paper(compose, base_model, "gxpo_k5")
    _validate_with_verl(copy.deepcopy(cfg), monkeypatch)  # raises on a value verl refuses
    # ... and the check is live on this config: a batch verl cannot split over the GPUs is refused
    cfg.actor_rollout_ref.actor.use_dynamic_bsz = False
    cfg.data.train_batch_size, cfg.actor_rollout_ref.rollout.n = 3, 1
    with pytest.raises(AssertionError, match="real_train_batch_size"):
        _validate_with_verl(cfg, monkeypatch)


def test_verl_dataclasses_accept_rollout_algorithm_reward(compose):
    from verl.utils.config import omega_conf_to_dataclass

    cfg = _paper(compose, "qwen2.5-7b", "gxpo_k5")
    rollout = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    assert rollout.val_kwargs.n >= 16 and rollout.val_kwargs.temperature == 1.0
    assert rollout.layered_summon is True
    algo = omega_conf_to_dataclass(cfg.algorithm)
    assert algo.adv_estimator == "grpo"


def test_lora_keys_are_verl_hf_model_fields():
    import dataclasses

    from verl.workers.config import HFModelConfig

    fields = {f.name for f in dataclasses.fields(HFModelConfig)}
    assert {"lora_rank", "lora_alpha", "target_modules", "enable_gradient_checkpointing"} <= fields


def test_actor_config_dataclass_builds_every_method_preset(compose):
    """verl builds the actor config named by ``_target_`` (GXPOActorConfig) from every method preset,
    with the preset's rule, K and alpha."""
    from verl.utils.config import omega_conf_to_dataclass

    from verl_ext.workers.config import GXPOActorConfig

    for method in METHODS:
        actor = omega_conf_to_dataclass(_paper(compose, "qwen2.5-1.5b", method).actor_rollout_ref.actor)
        assert isinstance(actor, GXPOActorConfig)
        rule, k, alpha = PAPER_METHODS[method]
        assert actor.update_rule == rule
        if rule != "grpo":
            section = getattr(actor, rule)
            assert (section.K, section.alpha) == (k, alpha), method


# --------------------------------------------------------------------------------------------------
# Debug preset
# --------------------------------------------------------------------------------------------------


def test_debug_preset_is_paper_math_shrunk(compose, monkeypatch):
    cfg = compose("experiment=paper_math_debug", "base_model=qwen2.5-1.5b", "method=gxpo_k3")
    full = _paper(compose, "qwen2.5-1.5b", "gxpo_k3")
    assert cfg.trainer.total_training_steps == 2
    assert cfg.trainer.n_gpus_per_node == 1
    assert cfg.data.train_batch_size * cfg.actor_rollout_ref.rollout.n <= 16
    assert cfg.trainer.experiment_name == "debug_qwen2.5-1.5b_gxpo_k3_a1.0_s1"
    # the algorithm is the paper's
    for key in (
        "algorithm.adv_estimator",
        "actor_rollout_ref.actor.use_kl_loss",
        "actor_rollout_ref.actor.kl_loss_coef",
        "actor_rollout_ref.actor.kl_loss_type",
        "actor_rollout_ref.actor.optim.clip_grad",
        "actor_rollout_ref.actor.optim.lr",
        "actor_rollout_ref.actor.clip_ratio",
        "actor_rollout_ref.rollout.name",
        "actor_rollout_ref.rollout.val_kwargs.temperature",
        "actor_rollout_ref.actor.update_rule",
        "actor_rollout_ref.actor.gxpo.K",
        "reward.custom_reward_function.path",
    ):
        assert OmegaConf.select(cfg, key) == OmegaConf.select(full, key), key
    _validate_with_verl(cfg, monkeypatch)


# --------------------------------------------------------------------------------------------------
# Sweep presets
# --------------------------------------------------------------------------------------------------


def _sweep_jobs(compose, *overrides: str) -> tuple[DictConfig, list[list[str]]]:
    """(job config without sweep values, job override lists) -- expanded as Hydra's BasicSweeper does."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = compose(*overrides, hydra=True)
    params = cfg.hydra.sweeper.params
    assert params, f"{overrides}: no hydra.sweeper.params"
    parser = OverridesParser.create()
    parsed = parser.parse_overrides([f"{k}={v}" for k, v in params.items()])
    batches = BasicSweeper.split_arguments(parsed, None)
    return cfg, [list(job) for batch in batches for job in batch]


def test_sweep_gxpo_k_alpha_is_3x3(compose):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    base, jobs = _sweep_jobs(compose, "experiment=paper_math", "base_model=qwen2.5-1.5b", "sweep=gxpo_k_alpha")
    assert len(jobs) == 9
    parser = OverridesParser.create()
    names = set()
    for job in jobs:
        # the job overrides are plain dotted keys: apply them as Hydra does (no group re-selection)
        cfg = copy.deepcopy(base)
        with open_dict(cfg):
            cfg.pop("hydra")
        for ov in parser.parse_overrides(job):
            OmegaConf.update(cfg, ov.key_or_group, ov.value(), merge=False)
        actor = cfg.actor_rollout_ref.actor
        assert actor.update_rule == "gxpo"
        assert actor.gxpo.K in (3, 5, 10) and actor.gxpo.alpha in (0.1, 0.5, 1.0)
        names.add(cfg.trainer.experiment_name)
    assert len(names) == 9
    assert "paper_math_qwen2.5-1.5b_gxpo_k10_a0.1_s1" in names


def test_sweep_table1_is_models_x_methods(compose):
    _, jobs = _sweep_jobs(compose, "experiment=paper_math", "sweep=table1")
    assert len(jobs) == len(BASE_MODELS) * len(METHODS) == 28
    assert {tuple(sorted(j)) for j in jobs} == {
        tuple(sorted((f"base_model={b}", f"method={m}"))) for b, m in MATRIX
    }


def test_sweep_methods_is_seven_rules(compose):
    _, jobs = _sweep_jobs(compose, "experiment=paper_math", "base_model=llama3.2-3b", "sweep=methods")
    assert sorted(j[0] for j in jobs) == sorted(f"method={m}" for m in METHODS)


def test_sweep_presets_set_nothing_else(compose):
    """table1/methods only carry hydra.sweeper.params: the job config equals the plain composition."""
    for preset in ("table1", "methods"):
        with_sweep = compose("experiment=paper_math", "base_model=qwen2.5-3b", "method=grpo", f"sweep={preset}")
        plain = _paper(compose, "qwen2.5-3b", "grpo")
        assert OmegaConf.to_container(with_sweep, resolve=False) == OmegaConf.to_container(plain, resolve=False)


# --------------------------------------------------------------------------------------------------
# Reward function path as verl loads it
# --------------------------------------------------------------------------------------------------


def test_reward_path_form_matches_verl_loader():
    from verl.utils.import_utils import load_extern_object

    # the form used in paper_math: pkg://<dotted module>, imported by name
    fn = load_extern_object("pkg://verl.utils.reward_score.gsm8k", "compute_score")
    assert callable(fn)
    # a ".py" suffix is NOT accepted by the pkg:// form
    with pytest.raises(ModuleNotFoundError):
        load_extern_object("pkg://verl/utils/reward_score/gsm8k.py", "compute_score")


def test_project_reward_function_loads_the_way_verl_loads_it(compose):
    """paper_math's reward function, loaded from its configured path as verl loads it, scores."""
    from verl.utils.import_utils import load_extern_object

    reward = _paper(compose, "qwen2.5-1.5b", "grpo").reward.custom_reward_function
    fn = load_extern_object(reward.path, reward.name)
    right = fn("math_dapo", "so the answer is \\boxed{42}", "42")
    wrong = fn("math_dapo", "so the answer is \\boxed{41}", "42")
    score = lambda r: r["score"] if isinstance(r, dict) else r  # noqa: E731
    assert score(right) > score(wrong)


# --------------------------------------------------------------------------------------------------
# Paper-protocol preset (the authors' run.sh, variant=authors)
# --------------------------------------------------------------------------------------------------


def test_paper_protocol_follows_the_authors_script(compose, monkeypatch):
    from verl_ext.core.config import VARIANT_DEFAULTS, GXPOConfig, build_config

    cfg = compose("experiment=paper_protocol", "base_model=qwen2.5-1.5b", "method=gxpo_k5")
    arr = cfg.actor_rollout_ref
    actor, rollout, model = arr.actor, arr.rollout, arr.model
    # run.sh values
    assert (cfg.data.train_batch_size, rollout.n, actor.optim.lr) == (128, 5, 1e-7)
    assert (model.lora_rank, model.lora_alpha) == (128, 256)
    assert sorted(model.target_modules) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert (actor.use_kl_loss, actor.kl_loss_coef, actor.kl_loss_type) == (True, 0.001, "low_var_kl")
    assert actor.clip_ratio == 0.2 and actor.optim.clip_grad == 1.0
    assert (cfg.data.max_prompt_length, cfg.data.max_response_length) == (1024, 3072)
    assert cfg.trainer.total_training_steps == 300
    assert (rollout.val_kwargs.n, rollout.val_kwargs.temperature) == (16, 1.0)
    assert actor.ppo_mini_batch_size == cfg.data.train_batch_size
    # the authors' GXPO: variant, K from the method preset, alpha from the variant, EMA gate tau 0.5
    gx = build_config(GXPOConfig, OmegaConf.to_container(actor.gxpo, resolve=True), "gxpo.")
    assert (gx.variant, gx.K, gx.alpha) == ("authors", 5, 0.5)
    assert (gx.gate_stat, gx.ema_omega, gx.z_threshold, gx.recompute_old_log_probs) == ("ema", 0.1, 0.5, True)
    assert (gx.ratio_source, gx.ratio_min, gx.ratio_max) == ("clipped", -2.0, 3.0)
    assert cfg.trainer.experiment_name == "paper_protocol_qwen2.5-1.5b_gxpo_k5_a0.5_s1"
    # the YAML's alpha table agrees with the core's variant table
    assert dict(arr.actor.gxpo._variant_alpha) == {"paper_text": VARIANT_DEFAULTS["alpha"][0],
                                                   "authors": VARIANT_DEFAULTS["alpha"][1]}
    # the other run.sh version's recompute flag is a plain override
    other = compose("experiment=paper_protocol", "base_model=qwen2.5-1.5b", "method=gxpo_k5",
                    "actor_rollout_ref.actor.gxpo.recompute_old_log_probs=false")
    assert other.actor_rollout_ref.actor.gxpo.recompute_old_log_probs is False
    _validate_with_verl(cfg, monkeypatch)


def test_variant_on_the_command_line_changes_alpha_and_explicit_alpha_wins(compose):
    from verl_ext.core.config import GXPOConfig, build_config

    def resolved(*extra):
        c = compose("experiment=paper_math", "base_model=qwen2.5-1.5b", "method=gxpo_k5", *extra)
        return c, build_config(GXPOConfig, OmegaConf.to_container(c.actor_rollout_ref.actor.gxpo, resolve=True), "g.")

    cfg, gx = resolved("actor_rollout_ref.actor.gxpo.variant=authors")
    assert (gx.alpha, gx.ratio_source, gx.window, gx.z_threshold) == (0.5, "clipped", 30, 2.0)
    assert cfg.trainer.experiment_name.endswith("_gxpo_k5_a0.5_s1")
    _, gx = resolved("actor_rollout_ref.actor.gxpo.variant=authors", "actor_rollout_ref.actor.gxpo.alpha=0.8",
                     "actor_rollout_ref.actor.gxpo.window=12")
    assert (gx.alpha, gx.window, gx.warmup) == (0.8, 12, 30)
