"""Framework-free core of the update rules (pure torch, no verl import).

``build_update_rule(name, params, gxpo=..., sfpo=..., process_group=...)`` returns a rule whose
``step(compute_grads, optimizer_step)`` applies GRPO, SFPO or GXPO to one fixed mini-batch.
"""

from .config import UPDATE_RULES, ConfigError, GXPOConfig, SFPOConfig, build_config
from .extrapolation import geometric_scale, retention_ratio
from .gate import ZScoreGate
from .rules import GRPORule, GXPORule, SFPORule, TorchOptimizerState, UpdateRule, build_update_rule

__all__ = [
    "UPDATE_RULES", "ConfigError", "GXPOConfig", "SFPOConfig", "build_config", "geometric_scale",
    "retention_ratio", "ZScoreGate", "GRPORule", "GXPORule", "SFPORule", "TorchOptimizerState",
    "UpdateRule", "build_update_rule",
]
