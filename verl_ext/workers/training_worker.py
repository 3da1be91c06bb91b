"""verl adapter: a ``TrainingWorker`` whose per-mini-batch update is a GRPO / SFPO / GXPO rule.

verl 0.9.1's actor update is ``TrainingWorker.train_mini_batch`` (mini-batches x ppo_epochs, LR
scheduler once per call) -> ``train_batch`` (one mini-batch) -> ``BaseEngine.train_batch``
(``optimizer_zero_grad`` -> ``forward_backward_batch`` -> ``optimizer_step``). This worker keeps
``train_mini_batch`` and everything around it, and replaces only the engine call inside
``train_batch`` with the core rule, whose closures are the engine's own primitives:

* ``compute_grads``  = ``engine.optimizer_zero_grad()`` + ``engine.forward_backward_batch(batch)``
  (all micro-batches, dynamic batch size, Ulysses, LoRA: whatever the engine does);
* ``optimizer_step`` = ``engine.optimizer_step()`` (clip at ``optim.clip_grad``, skip non-finite,
  returns the pre-clip global norm, leaves the clipped gradient in ``.grad``).

All passes run inside the one ``engine.train_mode()`` context ``train_batch`` opens, so parameter
and optimizer offload load once per mini-batch. The trainable parameters are those with
``requires_grad`` (only the LoRA adapters under peft). The rule's state (gate, counters) is saved
beside the engine's checkpoint as ``update_rule_rank{r}.pt`` and restored on load. With
``update_rule=grpo`` the update is exactly verl's stock one.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import torch
import torch.distributed as dist
from tensordict import TensorDict

from verl.single_controller.base.decorator import Dispatch, make_nd_compute_dataproto_dispatch_fn, register
from verl.utils import tensordict_utils as tu
from verl.utils.tensordict_utils import maybe_fix_3d_position_ids
from verl.utils.metric.utils import Metric
from verl.workers.engine_workers import TrainingWorker

from verl_ext.core import TorchOptimizerState, UpdateRule, build_update_rule
from verl_ext.core.config import GXPOConfig, SFPOConfig

logger = logging.getLogger(__name__)

RULE_STATE_FILE = "update_rule_rank{rank}.pt"
# cumulative counters: a training step reports the value after its last mini-batch, not a mean
CUMULATIVE_SUFFIXES = ("/backward_passes", "/optimizer_steps", "/skipped_updates", "/updates", "/diagnostic_passes", "/shutoff_update")


def _scalar(v: Any) -> Optional[float]:
    if isinstance(v, Metric):
        return float(v.aggregate())
    if isinstance(v, list):
        if not v:
            return None
        if isinstance(v[0], Metric):
            return float(Metric.aggregate_dp(v))
        return float(sum(_scalar(x) for x in v) / len(v))
    if isinstance(v, torch.Tensor):
        return float(v.float().mean().item())
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


class GXPOTrainingWorker(TrainingWorker):
    """``TrainingWorker`` that applies ``update_rule`` (grpo | sfpo | gxpo) to every mini-batch."""

    def __init__(self, config, update_rule: str = "grpo", gxpo: Optional[GXPOConfig] = None, sfpo: Optional[SFPOConfig] = None):
        super().__init__(config)
        self.update_rule_name = update_rule
        self.gxpo_config = gxpo or GXPOConfig()
        self.sfpo_config = sfpo or SFPOConfig()
        self.rule: Optional[UpdateRule] = None
        self._pending_rule_state: Optional[dict] = None

    # -- configuration ---------------------------------------------------------------------------
    def configure_update_rule(self, update_rule: str, gxpo=None, sfpo=None) -> None:
        """Select the rule (called by the outer worker after construction, before the first update)."""
        self.update_rule_name = update_rule
        self.gxpo_config = gxpo if gxpo is not None else self.gxpo_config
        self.sfpo_config = sfpo if sfpo is not None else self.sfpo_config
        self.rule = None

    def _trainable_params(self):
        return [p for p in self.engine.module.parameters() if p.requires_grad]

    def _process_group(self):
        """The group over which parameter shards are disjoint (FSDP's shard dimension)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return None
        mesh = getattr(self.engine, "device_mesh", None)
        if mesh is not None and mesh.ndim == 2 and "fsdp" in (mesh.mesh_dim_names or ()):
            # HSDP: replicas along "ddp" hold identical shards; norms reduce over the shard group
            return mesh.get_group("fsdp")
        return dist.group.WORLD

    def _get_rule(self) -> UpdateRule:
        if self.rule is None:
            self.rule = build_update_rule(
                self.update_rule_name, self._trainable_params, gxpo=self.gxpo_config, sfpo=self.sfpo_config,
                process_group=self._process_group(),
            )
            if self._pending_rule_state is not None:
                self.rule.load_state_dict(self._pending_rule_state)
                self._pending_rule_state = None
        return self.rule

    # -- the update ------------------------------------------------------------------------------
    def _rule_train_batch(self, data: TensorDict) -> dict:
        """What ``BaseEngine.train_batch`` does, with the rule driving the engine primitives."""
        engine = self.engine
        rule = self._get_rule()
        maybe_fix_3d_position_ids(data)
        needs_entropy = self.update_rule_name == "sfpo" and self.sfpo_config.shutoff == "adaptive"
        if needs_entropy:
            tu.assign_non_tensor(data, calculate_entropy=True)
        last: dict[str, Any] = {}

        def compute_grads(phase="plain"):
            engine.optimizer_zero_grad()
            out = engine.forward_backward_batch(data, self.loss_fn, forward_only=False)
            last["outputs"] = out
            aux = {}
            if needs_entropy and out is not None:
                ent = _scalar(out.get("metrics", {}).get("actor/entropy_loss"))
                if ent is not None:
                    t = torch.tensor([ent], dtype=torch.float64, device=self.device_name)
                    group = engine.get_data_parallel_group()
                    if dist.is_initialized() and dist.get_world_size(group) > 1:
                        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
                        t /= dist.get_world_size(group)
                    aux["entropy"] = float(t.item())
            return aux

        def optimizer_step():
            n = engine.optimizer_step()
            last["grad_norm"] = n
            return n

        hooks = TorchOptimizerState(engine.optimizer) if getattr(self.gxpo_config, "diagnose_every", 0) else None
        rule_metrics = rule.step(compute_grads, optimizer_step, optimizer_state=hooks)
        outputs = last["outputs"]  # the final pass's outputs (corrective / slow / only pass)
        if engine.is_mp_src_rank_with_outputs():
            assert "grad_norm" not in outputs["metrics"]
            outputs["metrics"]["grad_norm"] = last["grad_norm"]
            # global values (identical on every rank); Metric so verl's dp all-gather aggregates them
            outputs["metrics"].update({k: Metric(aggregation="mean", value=v) for k, v in rule_metrics.items()})
        return outputs

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="train"), blocking=False)
    def train_batch(self, data: TensorDict) -> TensorDict:
        """verl's ``TrainingWorker.train_batch`` with the engine update replaced by the rule (see module doc)."""
        from codetiming import Timer

        assert self.loss_fn is not None, "loss function can't be None when calling train_batch"
        assert not self.engine_config.forward_only, "Can't run `train_batch` when forward_only is in the engine config."
        global_token_num = tu.get(data, key="global_token_num")
        disable_auto_offload = tu.get(data, key="disable_auto_offload", default=False)
        images_seqlens = tu.get(data, key="images_seqlens", default=None)
        default_keys = dict(
            use_remove_padding=self.model_config.get("use_remove_padding", False),
            use_dynamic_bsz=self.engine_config.use_dynamic_bsz,
            max_token_len_per_gpu=self.engine_config.max_token_len_per_gpu,
            micro_batch_size_per_gpu=self.engine_config.micro_batch_size_per_gpu,
            use_fused_kernels=self.engine_config.use_fused_kernels,
        )
        for key, val in default_keys.items():
            if key not in data.keys():
                tu.assign_non_tensor(data, **{key: val})

        with self.engine.train_mode(disable_auto_offload=disable_auto_offload), Timer(name="train_batch", logger=None) as timer:
            output = self._rule_train_batch(data)
        delta_time = timer.last

        lr = self.engine.lr_scheduler_step() if tu.get(data, key="update_lr_scheduler", default=False) else None
        if not self.engine.is_mp_src_rank_with_outputs():
            return None
        output.pop("model_output", None)
        if lr is not None:
            output["metrics"]["lr"] = lr
        return self._postprocess_output(
            output, global_token_num=global_token_num, delta_time=delta_time, forward_only=False,
            images_seqlens=images_seqlens,
        ).cpu()

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="train"), blocking=False)
    def train_mini_batch(self, data: TensorDict) -> TensorDict:
        output = super().train_mini_batch(data)
        if output is not None:
            metrics = tu.get(output, "metrics")
            for k, v in list(metrics.items()):
                if k.endswith(CUMULATIVE_SUFFIXES) and isinstance(v, list) and v:
                    metrics[k] = [v[-1]]
        return output

    # -- persistence -----------------------------------------------------------------------------
    def rule_state_path(self, local_path: str) -> str:
        rank = dist.get_rank() if dist.is_initialized() else 0
        return os.path.join(local_path, RULE_STATE_FILE.format(rank=rank))

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def save_checkpoint(self, local_path, hdfs_path=None, global_step=0, max_ckpt_to_keep=None):
        out = super().save_checkpoint(local_path, hdfs_path, global_step, max_ckpt_to_keep)
        state = self.rule.state_dict() if self.rule is not None else self._pending_rule_state
        if state is not None:
            os.makedirs(local_path, exist_ok=True)
            torch.save(state, self.rule_state_path(local_path))
        return out

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def load_checkpoint(self, local_path, hdfs_path=None, del_local_after_load=False):
        path = self.rule_state_path(local_path) if local_path else None
        state = torch.load(path, weights_only=False) if path and os.path.exists(path) else None
        out = super().load_checkpoint(local_path, hdfs_path, del_local_after_load)
        if state is not None:
            if state.get("rule") != self.update_rule_name:
                logger.warning("checkpoint holds a '%s' update-rule state; this run uses '%s': not restored",
                               state.get("rule"), self.update_rule_name)
            elif self.rule is not None:
                self.rule.load_state_dict(state)
            else:
                self._pending_rule_state = state
        return out
