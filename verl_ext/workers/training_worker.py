"""verl adapter: a ``TrainingWorker`` whose per-mini-batch update is a GRPO / SFPO / GXPO rule.

verl 0.9.1's actor update is ``TrainingWorker.train_mini_batch`` (mini-batches x ppo_epochs, LR
scheduler once per call) -> ``TrainingWorker.train_batch`` (one mini-batch: engine defaults, the
``train_mode`` context, timing, LR step, metrics post-processing; profiled as ``train_batch``) ->
``engine.train_batch(data, loss_function)`` = ``BaseEngine.train_batch`` (``optimizer_zero_grad`` ->
``forward_backward_batch`` -> ``optimizer_step``). This worker inherits both worker methods
unchanged and replaces only the last call: its engine's ``train_batch`` is bound to
:meth:`GXPOTrainingWorker._engine_train_batch`, which applies the core rule with the engine's own
primitives as closures:

* ``compute_grads(phase)`` = ``engine.optimizer_zero_grad()`` + ``engine.forward_backward_batch(batch)``
  (all micro-batches, dynamic batch size, Ulysses, LoRA: whatever the engine does). It returns the
  pass's global policy entropy when a gate reads it and, under fp16, the loss scale the engine's
  ``ShardedGradScaler`` applied (``grad_scale``: ``.grad`` holds scale x the gradient until
  ``optimizer_step`` unscales it). With ``gxpo.recompute_old_log_probs`` the batch's
  ``old_log_probs`` are recomputed at the current parameters before the ``probe2`` and
  ``corrective`` passes, by the engine's forward exactly as verl's ``compute_log_prob`` does.
* ``optimizer_step()`` = ``engine.optimizer_step()`` (unscale, clip at ``optim.clip_grad``, skip
  non-finite, returns the pre-clip global norm, leaves the clipped gradient in ``.grad``); a step
  the grad scaler skipped is reported as a non-finite norm.

All passes run inside the ``engine.train_mode()`` context verl's ``train_batch`` opens, so parameter
and optimizer offload load once per mini-batch. The trainable parameters are those with
``requires_grad`` (only the LoRA adapters under peft).

Metrics: verl's actor metrics (``actor/pg_loss``, ``actor/ppo_kl``, ``actor/pg_clipfrac``,
``actor/entropy_loss``, ``loss``, ``grad_norm``) come from the FIRST pass of the update (at theta0,
comparable with a GRPO run); the last pass of a multi-pass update (GXPO's corrective, SFPO's slow
pass) is reported as ``<rule>/<phase>_<name>`` (``gxpo/corrective_pg_loss``, ...). ``mfu`` counts
every pass's work. The rule's state (gate, counters) is saved beside the engine's checkpoint as
``update_rule_rank{r}.pt`` and restored on load. With ``update_rule=grpo`` the update is exactly
verl's stock one.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any, Optional

import torch
import torch.distributed as dist
from tensordict import TensorDict

from verl.single_controller.base.decorator import Dispatch, make_nd_compute_dataproto_dispatch_fn, register
from verl.utils import tensordict_utils as tu
from verl.utils.metric.utils import Metric
from verl.utils.tensordict_utils import maybe_fix_3d_position_ids
from verl.workers.engine_workers import TrainingWorker

from verl_ext.core import TorchOptimizerState, UpdateRule, build_update_rule
from verl_ext.core.policies import clone_state

from .checkpoint_files import RULE_STATE_FILE, CheckpointError, rank_files, rule_state_problem, torch_file_problem
from verl_ext.core.config import GXPOConfig, SFPOConfig
from verl_ext.core.dist import local

logger = logging.getLogger(__name__)

# cumulative counters: a training step reports the value after its last mini-batch, not a mean
CUMULATIVE_SUFFIXES = (
    "/backward_passes", "/optimizer_steps", "/skipped_updates", "/updates", "/diagnostic_passes", "/shutoff_update",
    "/degenerate_skips", "/fallback_steps",
)
# budget counters that survive a resume under a different update_rule (iso-BP accounting)
BUDGET_COUNTERS = ("backward_passes", "optimizer_steps")
# phases whose pass is the update's "first" / "last" training pass (diagnostic passes are extra)
_DIAGNOSTIC = "diagnostic"
# a forward-only pass costs about a third of a forward+backward one (verl's own mfu convention)
_FORWARD_ONLY_WORK = 1.0 / 3.0


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


class EngineOptimizerState(TorchOptimizerState):
    """The core's optimizer-state hooks for a verl engine's optimizer, with host-memory snapshots.

    Like :class:`~verl_ext.core.policies.TorchOptimizerState` (which it extends: ``lr_wd`` for
    ``ratio_source=adam_direction``), it snapshots the local shards of FSDP2 DTensor states and
    copies back INTO the state tensors the optimizer holds at restore time, so it stays right when
    verl's optimizer offload (``offload_fsdp_optimizer`` / ``load_fsdp_optimizer``) has replaced
    those tensor objects in the meantime. A parameter without state at save time (before its first
    step) loses its state on restore, as a fresh optimizer would. ``host=True`` keeps the snapshot
    in host memory (used when the engine offloads its optimizer); otherwise it lives beside the
    state (AdamW: two parameter-sized fp32 copies plus the step counters).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, host: bool = False):
        super().__init__(optimizer)
        self.host = host

    def _params(self):
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _snap_value(self, v):
        """A deep copy of one state value: tensors (local shards) cloned -- to host memory when
        ``host`` -- and nested dicts/lists/plain values copied, never aliased by the live state."""
        if isinstance(v, torch.Tensor):
            loc = local(v).detach()
            return loc.to("cpu", copy=True) if self.host else loc.clone()
        if isinstance(v, dict):
            return {k: self._snap_value(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(self._snap_value(x) for x in v)
        return copy.deepcopy(v)

    def _restore_value(self, cur, saved):
        """``saved`` put back into the live value ``cur``: tensors copied in place into the live tensor
        (its device, its DTensor shard), nested containers member by member, the rest copied."""
        if isinstance(saved, torch.Tensor):
            if isinstance(cur, torch.Tensor) and local(cur).shape == saved.shape:
                local(cur).copy_(saved)
                return cur
            return clone_state(saved)
        if isinstance(saved, dict) and isinstance(cur, dict):
            for k in [k for k in cur if k not in saved]:
                del cur[k]
            for k, v in saved.items():
                cur[k] = self._restore_value(cur.get(k), v)
            return cur
        if isinstance(saved, list) and isinstance(cur, list) and len(cur) == len(saved):
            cur[:] = [self._restore_value(c, v) for c, v in zip(cur, saved)]
            return cur
        return clone_state(saved)

    def save(self):
        snap = []
        for p in self._params():
            st = self.optimizer.state.get(p)
            if not st:
                snap.append(None)
                continue
            snap.append({k: self._snap_value(v) for k, v in st.items()})
        groups = [{k: clone_state(v) for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        return {"state": snap, "groups": groups}

    @torch.no_grad()
    def restore(self, snapshot) -> None:
        params, saved = self._params(), snapshot["state"]
        if len(params) != len(saved):
            raise ValueError(f"optimizer snapshot holds {len(saved)} parameters, the optimizer {len(params)}")
        for p, entry in zip(params, saved):
            if entry is None:
                self.optimizer.state.pop(p, None)
                continue
            st = self.optimizer.state[p]
            for k, v in entry.items():
                cur = st.get(k)
                if isinstance(v, torch.Tensor):
                    if not isinstance(cur, torch.Tensor):
                        raise RuntimeError(f"optimizer state '{k}' of a parameter disappeared between save and restore")
                    local(cur).copy_(v)
                else:  # nested containers / plain values: restored from the snapshot's own copy
                    st[k] = self._restore_value(cur, v)
        for g, sg in zip(self.optimizer.param_groups, snapshot["groups"]):
            g.update(clone_state(sg))


def response_scores(data: TensorDict) -> Optional[torch.Tensor]:
    """Per-response scores of an update batch: the sum over the response of the token-level scores.

    verl's v1 trainer keeps the reward manager's token scores under ``rm_scores`` (a nested
    tensor, one row per response) in the batch it hands to ``update_actor``; the v0 trainer (and
    the test batches) carry them padded as ``token_level_scores``. None when neither is present.
    """
    for key in ("rm_scores", "token_level_scores"):
        if key in data.keys():
            x = data[key]
            if getattr(x, "is_nested", False):
                return torch.stack([row.float().sum() for row in x.unbind()])
            return x.float().reshape(x.shape[0], -1).sum(-1)
    return None


class _EnginePasses:
    """The rule's two closures for one mini-batch, built from verl's engine primitives, and the record
    of the passes they ran (outputs, pre-clip norms, extra forward-only passes).

    * :meth:`compute_grads` = ``engine.optimizer_zero_grad()`` + ``engine.forward_backward_batch``
      (the loss exactly as verl computes it), with the policy entropy on the passes the gate reads
      and, with ``recompute_old_log_probs``, ``old_log_probs`` recomputed before probe 2 and the
      corrective pass;
    * :meth:`optimizer_step` = ``engine.optimizer_step()``, NaN when an fp16 grad scaler skipped it.
    """

    def __init__(self, worker: "GXPOTrainingWorker", data: TensorDict, loss_fn, *, entropy_phases: set,
                 recompute_old_log_probs: bool):
        self.worker, self.engine, self.data, self.loss_fn = worker, worker.engine, data, loss_fn
        self.entropy_phases = entropy_phases
        self.base_entropy = bool(tu.get(data, key="calculate_entropy", default=False))
        recompute = recompute_old_log_probs and "old_log_probs" in data.keys()
        self.original_old = data["old_log_probs"] if recompute else None
        self.passes: list[dict] = []
        self.norms: list[float] = []
        self.forwards = 0

    def compute_grads(self, phase: str = "plain") -> dict:
        data = self.data
        if self.original_old is not None:
            if phase in ("probe2", "corrective"):
                self.worker._recompute_old_log_probs(data)
                self.forwards += 1
            else:  # theta0's passes (probe 1, plain fallback, diagnostic) use the rollout's old log-probs
                data["old_log_probs"] = self.original_old
        want_entropy = phase in self.entropy_phases
        tu.assign_non_tensor(data, calculate_entropy=self.base_entropy or want_entropy)
        self.engine.optimizer_zero_grad()
        out = self.engine.forward_backward_batch(data, self.loss_fn, forward_only=False)
        self.passes.append({"phase": phase, "outputs": out})
        aux = {}
        if want_entropy:
            ent = self.worker._pass_entropy(out)
            if ent is not None:
                aux["entropy"] = ent
        scaler = self.worker._grad_scaler()
        if scaler is not None:
            aux["grad_scale"] = float(scaler.get_scale())
        return aux

    def optimizer_step(self) -> float:
        scaler = self.worker._grad_scaler()
        scale_before = float(scaler.get_scale()) if scaler is not None else None
        n = float(self.engine.optimizer_step())
        if scaler is not None and float(scaler.get_scale()) < scale_before:
            n = float("nan")  # the scaler found inf/nan and skipped optimizer.step()
        self.norms.append(n)
        return n

    def restore_batch(self) -> None:
        """Put back the rollout's ``old_log_probs`` and the batch's own ``calculate_entropy``."""
        if self.original_old is not None:
            self.data["old_log_probs"] = self.original_old
        tu.assign_non_tensor(self.data, calculate_entropy=self.base_entropy)


class GXPOTrainingWorker(TrainingWorker):
    """``TrainingWorker`` that applies ``update_rule`` (grpo | sfpo | gxpo) to every mini-batch."""

    def __init__(self, config, update_rule: str = "grpo", gxpo: Optional[GXPOConfig] = None, sfpo: Optional[SFPOConfig] = None):
        super().__init__(config)
        self.update_rule_name = update_rule
        self.gxpo_config = gxpo or GXPOConfig()
        self.sfpo_config = sfpo or SFPOConfig()
        self.rule: Optional[UpdateRule] = None
        self._pending_rule_state: Optional[dict] = None
        self._pending_counters: Optional[dict] = None
        self._pass_work = 1.0  # training-pass equivalents of the last update (for mfu)
        self.last_passes: list[dict] = []  # phase, metrics, loss of every pass of the last update (for tests)
        # verl's TrainingWorker.train_batch calls engine.train_batch(data, loss_function=...): that one
        # call (BaseEngine.train_batch: zero_grad -> forward_backward -> optimizer_step) is where the
        # rule runs, so it is rebound on this engine instance; verl's classes stay unchanged
        self.engine.train_batch = self._engine_train_batch

    # -- configuration ---------------------------------------------------------------------------
    def configure_update_rule(self, update_rule: str, gxpo=None, sfpo=None) -> None:
        """Select the rule (called by the outer worker after construction, before the first update)."""
        self.update_rule_name = update_rule
        self.gxpo_config = gxpo if gxpo is not None else self.gxpo_config
        self.sfpo_config = sfpo if sfpo is not None else self.sfpo_config
        self.rule = None

    def _trainable_params(self):
        return [p for p in self.engine.module.parameters() if p.requires_grad]

    def _process_groups(self):
        """``(reduction group, decision group)`` for the rule.

        Reductions (norms, dots, counts) run over the group across which parameter shards are
        disjoint: FSDP's shard dimension (``fsdp``; under HSDP the replicas along ``ddp`` hold
        identical shards). The gate decision is broadcast from global rank 0 over the whole actor
        group, so replica groups can never run different numbers of passes.
        """
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return None, None
        world = dist.group.WORLD
        mesh = getattr(self.engine, "device_mesh", None)
        if mesh is not None and mesh.ndim == 2 and "fsdp" in (mesh.mesh_dim_names or ()):
            return mesh.get_group("fsdp"), world
        return world, world

    def _get_rule(self) -> UpdateRule:
        if self.rule is None:
            shard_group, decision_group = self._process_groups()
            self.rule = build_update_rule(
                self.update_rule_name, self._trainable_params, gxpo=self.gxpo_config, sfpo=self.sfpo_config,
                process_group=shard_group, decision_group=decision_group,
                clip_grad=getattr(self.optimizer_config, "clip_grad", None),
            )
            if self._pending_rule_state is not None:
                self.rule.load_state_dict(self._pending_rule_state)
                self._pending_rule_state = None
            if self._pending_counters is not None:
                self._apply_counters(self._pending_counters)
                self._pending_counters = None
        return self.rule

    def _apply_counters(self, counters: dict) -> None:
        for k, v in counters.items():
            setattr(self.rule, k, int(v))

    # -- helpers of the passes -------------------------------------------------------------------
    def _grad_scaler(self):
        """The engine's fp16 ``ShardedGradScaler`` when it is active, else None (bf16 / fp32)."""
        scaler = getattr(self.engine, "scaler", None)
        return scaler if scaler is not None and scaler.is_enabled() else None

    def _dp_mean(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self.device_name)
        group = self.engine.get_data_parallel_group()
        if dist.is_initialized() and dist.get_world_size(group) > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
            t /= dist.get_world_size(group)
        return float(t.item())

    def _pass_entropy(self, out) -> Optional[float]:
        ent = _scalar(out.get("metrics", {}).get("actor/entropy_loss")) if out is not None else None
        return None if ent is None else self._dp_mean(ent)

    def _pass_loss(self, out) -> Optional[float]:
        """The pass's loss as verl's ``_postprocess_output`` reports it (micro-batch sum, dp mean)."""
        loss = out.get("loss") if out is not None else None
        if loss is None:
            return None
        return self._dp_mean(float(torch.sum(torch.as_tensor(loss, dtype=torch.float64))))

    def _recompute_old_log_probs(self, data: TensorDict) -> None:
        """``old_log_probs`` at the current parameters, as verl's ``compute_log_prob`` computes them.

        The engine's forward-only pass (``infer_batch``, eval mode, the batch's own micro-batching
        and temperature), converted to the layout the batch already uses: nested per response (v1
        trainer, ``response_from_nested``) or padded (v0 trainer, ``no_padding_2_padding``).
        """
        from verl.workers.utils.padding import no_padding_2_padding, response_from_nested

        engine = self.engine
        old = data["old_log_probs"]
        was_training = engine.module.training
        engine.module.eval()
        try:
            out = engine.infer_batch(data, loss_function=None)
        finally:
            engine.module.train(was_training)
        log_probs = out["model_output"]["log_probs"]
        if getattr(old, "is_nested", False):
            new = response_from_nested(log_probs, data["response_mask"])
        else:
            new = no_padding_2_padding(log_probs, data)
        data["old_log_probs"] = new.to(old.dtype)

    def _degenerate(self, data: TensorDict) -> bool:
        """``gxpo.degenerate_skip_frac``: more than that fraction of the mini-batch's responses score 0.

        Counted over the whole data-parallel mini-batch (all-reduced), so every rank decides alike.
        """
        frac = self.gxpo_config.degenerate_skip_frac
        if self.update_rule_name != "gxpo" or frac is None:
            return False
        scores = response_scores(data)
        if scores is None:
            raise KeyError(
                "gxpo.degenerate_skip_frac needs the responses' scores in the update batch "
                "('rm_scores' or 'token_level_scores'); neither is present"
            )
        t = torch.tensor([float((scores == 0).sum()), float(scores.numel())], dtype=torch.float64, device=self.device_name)
        group = self.engine.get_data_parallel_group()
        if dist.is_initialized() and dist.get_world_size(group) > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        zeros, total = t.tolist()
        return total > 0 and zeros / total > float(frac)

    # -- the update ------------------------------------------------------------------------------
    def _engine_train_batch(self, data: TensorDict, loss_function=None) -> dict:
        """``BaseEngine.train_batch`` with the rule driving the engine primitives (bound on the engine)."""
        rule = self._get_rule()
        maybe_fix_3d_position_ids(data)
        engine_passes = _EnginePasses(self, data, loss_function if loss_function is not None else self.loss_fn,
                                      entropy_phases=self._entropy_phases(),
                                      recompute_old_log_probs=self._recomputes_old_log_probs())
        kwargs = {"optimizer_state": EngineOptimizerState(self.engine.optimizer, host=self.engine.is_optimizer_offload_enabled)}
        if self._degenerate(data):
            kwargs["force_plain"] = True
        try:
            rule_metrics = rule.step(engine_passes.compute_grads, engine_passes.optimizer_step, **kwargs)
        finally:
            engine_passes.restore_batch()
        return self._update_outputs(engine_passes, rule_metrics)

    def _entropy_phases(self) -> set:
        """The passes whose policy entropy the rule's gate reads (SFPO's adaptive gate, GXPO's entropy gate)."""
        if self.update_rule_name == "sfpo" and self.sfpo_config.shutoff == "adaptive":
            return {"fast", "slow", "plain"}
        if self.update_rule_name == "gxpo" and self.gxpo_config.gate_signal == "entropy":
            return {"corrective"}
        return set()

    def _recomputes_old_log_probs(self) -> bool:
        return self.update_rule_name == "gxpo" and bool(self.gxpo_config.recompute_old_log_probs)

    def _update_outputs(self, engine_passes: "_EnginePasses", rule_metrics: dict) -> dict:
        """verl's output of the update: the first training pass's, with ``grad_norm`` = probe 1's norm,
        the last pass's metrics as ``<rule>/<phase>_*`` and the rule's metrics added."""
        passes = engine_passes.passes
        training = [p for p in passes if p["phase"] != _DIAGNOSTIC] or passes
        first, last = training[0], training[-1]
        self._pass_work = len(passes) + _FORWARD_ONLY_WORK * engine_passes.forwards
        # rank-local metrics of every pass (dp-mean loss), for tests and debugging
        self.last_passes = [
            {"phase": p["phase"], "metrics": {k: _scalar(v) for k, v in p["outputs"].get("metrics", {}).items()},
             "loss": self._pass_loss(p["outputs"])}
            for p in passes
        ]
        last_loss = self.last_passes[passes.index(last)]["loss"]
        outputs = first["outputs"]
        if self.engine.is_mp_src_rank_with_outputs():
            assert "grad_norm" not in outputs["metrics"]
            norms = engine_passes.norms
            outputs["metrics"]["grad_norm"] = norms[0] if norms else float("nan")
            if last is not first:
                prefix = f"{self.update_rule_name}/{last['phase']}_"
                for k, v in last["outputs"]["metrics"].items():
                    outputs["metrics"][prefix + k.split("/", 1)[-1]] = v
                if last_loss is not None:
                    outputs["metrics"][prefix + "loss"] = Metric(aggregation="mean", value=last_loss)
            # global values (identical on every rank); Metric so verl's dp all-gather aggregates them
            outputs["metrics"].update({k: Metric(aggregation="mean", value=v) for k, v in rule_metrics.items()})
        return outputs

    def _postprocess_output(self, output, *, global_token_num, delta_time, forward_only, images_seqlens):
        """verl's post-processing; a training update's ``mfu`` counts every pass it ran."""
        final = super()._postprocess_output(
            output, global_token_num=global_token_num, delta_time=delta_time, forward_only=forward_only,
            images_seqlens=images_seqlens,
        )
        if not forward_only:
            metrics = tu.get(final, "metrics")
            if "mfu" in metrics:
                metrics["mfu"] = metrics["mfu"] * self._pass_work
            self._pass_work = 1.0
        return final

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="train"), blocking=False)
    def train_mini_batch(self, data: TensorDict) -> TensorDict:
        """verl's ``train_mini_batch``; then the rule's end of the training step (``rule.end_step()``,
        on every rank: ``gate_granularity=step`` decides there) and cumulative counters reported
        at their last value."""
        output = super().train_mini_batch(data)
        rule = self.rule
        step_metrics = rule.end_step() if rule is not None else {}
        if output is not None:
            metrics = tu.get(output, "metrics")
            for k, v in (step_metrics or {}).items():
                metrics[k] = [float(v)]
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
        """verl's save, then the rule state beside it; a failed write names the file it was writing
        (the trainer turns a full disk into ``no space left on <path>``, verl_ext/workers/trainer.py)."""
        try:
            out = super().save_checkpoint(local_path, hdfs_path, global_step, max_ckpt_to_keep)
        except Exception as e:
            raise CheckpointError(f"saving the checkpoint in {local_path} failed: {type(e).__name__}: {e}") from e
        state = self.rule.state_dict() if self.rule is not None else self._pending_rule_state
        if state is None and self._pending_counters is not None:
            state = {"rule": None, **self._pending_counters}
        if state is not None:
            os.makedirs(local_path, exist_ok=True)
            path = self.rule_state_path(local_path)
            try:
                torch.save(state, path)
            except Exception as e:
                raise CheckpointError(f"writing {path} failed: {type(e).__name__}: {e}") from e
        return out

    def _checkpoint_contents(self):
        manager = getattr(self.engine, "checkpoint_manager", None)
        return tuple(getattr(manager, "checkpoint_load_contents", None) or ("model", "optimizer", "extra"))

    def _check_rank_files(self, local_path: str) -> None:
        """This rank's files of the checkpoint are there and intact, else an error naming the file
        (verl's own load reports a truncated shard as ``checkpoint file is corrupted``, naming none)."""
        rank = dist.get_rank() if dist.is_initialized() else 0
        world = dist.get_world_size() if dist.is_initialized() else 1
        problems = []
        for path in rank_files(local_path, rank, world, self._checkpoint_contents()):
            if os.path.basename(path).startswith("update_rule_rank"):
                continue  # read below, with its own message
            problem = torch_file_problem(path)
            if problem:
                problems.append(problem)
        if problems:
            raise CheckpointError(f"cannot resume from {local_path} (rank {rank} of {world}): " + "; ".join(problems))

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def load_checkpoint(self, local_path, hdfs_path=None, del_local_after_load=False):
        """verl's load; then the rule state. A state saved under another ``update_rule`` restores
        only the budget counters (cumulative backward passes and optimizer steps), not the gate.
        A missing or unreadable rule-state file is an error naming it: resuming without it would
        silently restart the rule (its gate re-armed, its counters at zero)."""
        state = None
        if local_path:
            self._check_rank_files(local_path)
            path = self.rule_state_path(local_path)
            problem = rule_state_problem(path)
            if problem:
                raise CheckpointError(
                    f"cannot resume from {local_path}: {problem}; without it the update rule's gate and counters "
                    "would restart from zero. Resume from an older whole checkpoint (trainer.resume_mode=resume_path "
                    "trainer.resume_from_path=<run dir>/global_step_<N>), or start over with trainer.resume_mode=disable"
                )
            state = torch.load(path, weights_only=False)
        try:
            out = super().load_checkpoint(local_path, hdfs_path, del_local_after_load)
        except Exception as e:
            raise CheckpointError(f"loading the checkpoint in {local_path} failed: {type(e).__name__}: {e}") from e
        if state is not None:
            if state.get("rule") != self.update_rule_name:
                counters = {k: int(state[k]) for k in BUDGET_COUNTERS if k in state}
                logger.warning(
                    "checkpoint holds a '%s' update-rule state; this run uses '%s': only the budget counters %s carry over",
                    state.get("rule"), self.update_rule_name, counters,
                )
                if self.rule is not None:
                    self._apply_counters(counters)
                else:
                    self._pending_rule_state = None
                    self._pending_counters = counters
            elif self.rule is not None:
                self.rule.load_state_dict(state)
            else:
                self._pending_rule_state = state
        return out
