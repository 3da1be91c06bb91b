"""verl adapter: the advantage estimator ReinCAPO's recipe needs and verl 0.9.1 lacks.

``algorithm.adv_estimator=reinforce_no_baseline`` (conf/method/capo_rein.yaml): REINFORCE without a
baseline, as the CAPO authors' "REINFORCE" / "ReinCAPO" recipes (``luckeciano/stable-pg-llm``,
``grpo_efficient_nobaseline``): every response token's advantage is the response's outcome reward,
nothing subtracted, nothing scaled. Registered in verl's estimator registry on import; the gxpo_sync
trainer (:mod:`verl_ext.workers.trainer`) imports this module, so the mode that computes advantages
knows the name.
"""

from __future__ import annotations

from typing import Optional

import torch

from verl.trainer.ppo.core_algos import get_adv_estimator_fn, register_adv_est

NO_BASELINE = "reinforce_no_baseline"


def compute_no_baseline_outcome_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor,
                                          config: Optional[object] = None, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """``A_t = R`` (the sum of the response's token-level rewards) on every response token."""
    with torch.no_grad():
        scores = (token_level_rewards * response_mask).sum(dim=-1, keepdim=True)
        advantages = scores * response_mask
    return advantages, advantages


try:
    get_adv_estimator_fn(NO_BASELINE)
except ValueError:
    register_adv_est(NO_BASELINE)(compute_no_baseline_outcome_advantage)

__all__ = ["NO_BASELINE", "compute_no_baseline_outcome_advantage"]
