"""Framework-free core of the update rules (pure torch, no verl import).

``build_update_rule(name, params, gxpo=..., sfpo=..., process_group=..., decision_group=...,
clip_grad=...)`` returns a rule whose ``step(compute_grads, optimizer_step)`` applies GRPO, SFPO or
GXPO to one fixed mini-batch, and whose ``end_step()`` closes a training step.
"""

from .config import GXPO_VARIANTS, UPDATE_RULES, VARIANT_DEFAULTS, ConfigError, GXPOConfig, SFPOConfig, build_config
from .extrapolation import clamp_scale_, geometric_scale, retention_ratio
from .gate import EmaStatistic, WindowStatistic, ZScoreGate
from .policies import FailurePolicy, OptimizerStateHooks, OptimizerStatePolicy, TorchOptimizerState
from .rules import GRPORule, GXPORule, SFPORule, UpdateRule, build_update_rule

__all__ = [
    "GXPO_VARIANTS", "UPDATE_RULES", "VARIANT_DEFAULTS", "ConfigError", "GXPOConfig", "SFPOConfig", "build_config",
    "clamp_scale_", "geometric_scale", "retention_ratio", "EmaStatistic", "WindowStatistic", "ZScoreGate",
    "FailurePolicy", "OptimizerStateHooks", "OptimizerStatePolicy", "TorchOptimizerState", "GRPORule", "GXPORule",
    "SFPORule", "UpdateRule", "build_update_rule",
]
