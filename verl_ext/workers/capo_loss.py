"""verl adapter: CAPO's token mask applied before verl's actor loss (``ppo_loss``).

The mask is a pure function of quantities verl's policy loss does not receive (the feature ``h``
feeding the LM head and the full softmax), so it is computed where they exist, in the same
forward pass the loss uses, and applied *before* the loss:

* a forward hook on the LM head (``module.get_output_embeddings()``) reduces, for training
  forwards only, each token's feature and logits to three scalars -- ``|h/T|^2``, ``sum pi^2``,
  ``sum pi^3`` (:func:`verl_ext.core.capo.softmax_power_sums`) -- so no ``[tokens, vocab]`` tensor
  is kept; the engine's ``forward_step`` is wrapped on the instance only to hand the hook the
  micro-batch's sampling temperature;
* :class:`CAPOLoss` wraps the worker's loss function (``partial(ppo_loss, config=actor_config)``):
  it lays the scalars out like ``log_probs`` (verl's ``no_padding_2_padding``), computes the terms
  and the keep-mask (:mod:`verl_ext.core.capo`), and calls the wrapped loss with
  ``response_mask & keep``. verl normalises by the mini-batch's global token count
  (``batch_num_tokens``, counted before masking), so a masked token contributes zero to the
  policy-gradient, entropy and KL terms (as in the authors' per-token loss) and the others keep
  their weight. Any ``policy_loss.loss_mode`` and any update rule (GRPO / SFPO / GXPO, which all
  call the worker's loss) work unchanged: CAPO is orthogonal to both.

Metrics (``capo/...`` after the trainer's renaming): ``masked_frac`` (+ ``_fisher`` / ``_hessian``:
by which criterion), ``kl_mean``/``kl_max`` (predicted per-token KL), ``full_update_mean``/
``_min``/``_max`` (predicted objective change), ``hessian_abs_max`` and ``lr``.

Limits (checked in :func:`install_capo`): no fused kernels (they never materialise logits) and no
Ulysses sequence parallelism (the hook would see one shard).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist

from verl.utils import tensordict_utils as tu
from verl.utils.metric import AggregationType, Metric
from verl.workers.utils.padding import no_padding_2_padding

from verl_ext.core.capo import (
    PI_BINS,
    AdamLogitModel,
    CAPOConfig,
    keep_mask,
    masked_summary,
    softmax_power_sums,
    token_curvature,
    token_curvature_topk,
    token_gradients,
    topk_softmax,
)

CAPO_METRIC_PREFIX = "capo/"
CAPO_STATE_FILE = "capo_state_rank{rank}.pt"


def _lm_head(module: torch.nn.Module) -> torch.nn.Module:
    head = module.get_output_embeddings() if hasattr(module, "get_output_embeddings") else None
    if head is None:
        raise ValueError("CAPO needs a causal-LM module with get_output_embeddings() (the LM head)")
    return head


class CAPOLoss:
    """The worker's loss with CAPO's mask applied first (see module doc). Call :meth:`install` once."""

    def __init__(self, base_loss_fn, cfg: CAPOConfig, engine):
        self.base_loss_fn = base_loss_fn
        self.cfg = cfg
        self.engine = engine
        self._temperature: Any = None  # per packed token / per row, set by the forward_step wrapper
        self._armed = False
        self._raw: Optional[dict[str, torch.Tensor]] = None  # the last training forward's scalars (raw layout)
        self._handle = None
        self.adam: Optional[AdamLogitModel] = None  # built on the first training forward (vocab, hidden known)
        self._dp_group = None
        self._step_hooked = False

    # -- installation ----------------------------------------------------------------------------
    def install(self) -> "CAPOLoss":
        self._handle = _lm_head(self.engine.module).register_forward_hook(self._hook)
        original = self.engine.forward_step

        def forward_step(micro_batch, loss_function, forward_only):
            self._armed = (not forward_only) and loss_function is self
            if self._armed:
                self._temperature = self._token_temperature(micro_batch)
            try:
                return original(micro_batch, loss_function, forward_only)
            finally:
                self._armed = False

        self.engine.forward_step = forward_step
        return self

    @staticmethod
    def _token_temperature(micro_batch):
        t = micro_batch["temperature"] if "temperature" in micro_batch.keys() else tu.get(micro_batch, "temperature", default=1.0)
        if not torch.is_tensor(t):
            return float(t)
        use_rmpad = tu.get_non_tensor_data(data=micro_batch, key="use_remove_padding", default=True)
        input_ids = micro_batch["input_ids"]
        if use_rmpad and input_ids.is_nested:
            return t.float().repeat_interleave(input_ids.offsets().diff().to(t.device))
        return t.float()

    def _hook(self, module, inputs, output):
        if not self._armed:
            return
        cfg = self.cfg
        with torch.no_grad():
            h = inputs[0].detach()
            z = output.detach() if torch.is_tensor(output) else output.logits.detach()
            lead = z.shape[:-1]
            z2 = z.reshape(-1, z.shape[-1])
            temp = self._temperature
            if torch.is_tensor(temp):
                if len(lead) == 2 and lead[0] == 1:  # packed [1, N]: pad rows (tail) get T=1
                    t = torch.ones(lead[1], dtype=torch.float32, device=z.device)
                    t[: temp.numel()] = temp.to(z.device)
                else:  # [B, L]: one temperature per row
                    t = temp.to(z.device).repeat_interleave(lead[1])
            else:
                t = torch.tensor(float(temp), dtype=torch.float32, device=z.device)
            h_over_t = h.float().reshape(-1, h.shape[-1]) / (t.reshape(-1, 1) if t.dim() else t)
            raw = {"h_norm2": (h_over_t ** 2).sum(-1).reshape(lead)}
            if cfg.top_k > 0:
                ids, pi = topk_softmax(z2, t, cfg.top_k, chunk=cfg.logits_chunk)
                raw["topk_ids"] = ids.reshape(*lead, -1)
                raw["topk_pi"] = pi.reshape(*lead, -1)
                if cfg.optimizer_model == "adam":
                    raw["h"] = h_over_t.reshape(*lead, -1)
                    if self.adam is None:
                        self.adam = AdamLogitModel(z.shape[-1], h.shape[-1], cfg.adam_beta1, cfg.adam_beta2, cfg.adam_eps,
                                                   device=z.device)
            else:
                s2, s3 = softmax_power_sums(z2, t, chunk=cfg.logits_chunk)
                raw["sum_pi2"], raw["sum_pi3"] = s2.reshape(lead), s3.reshape(lead)
            self._raw = raw

    def _hook_optimizer(self) -> None:
        """The Adam model's moments advance once per optimizer step (after it), like the authors' per step."""
        if self._step_hooked or self.adam is None:
            return
        opt = getattr(self.engine, "optimizer", None)
        if opt is None or not hasattr(opt, "register_step_post_hook"):
            raise RuntimeError("CAPO optimizer_model=adam: the engine has no torch optimizer to follow")
        opt.register_step_post_hook(lambda *_: self._adam_step())
        self._step_hooked = True

    def _adam_step(self) -> None:
        reduce = None
        if dist.is_initialized() and dist.get_world_size(self._dp_group) > 1:
            reduce = lambda t: dist.all_reduce(t, group=self._dp_group)  # noqa: E731
        self.adam.step(reduce)

    def state_dict(self) -> dict:
        """The Adam model's moments (empty for the SGD model), for checkpoints."""
        return {"adam": self.adam.state_dict()} if self.adam is not None else {}

    def save(self, local_path: str) -> None:
        """The Adam model's state beside the actor checkpoint (one file per rank; nothing for SGD)."""
        if self.adam is None:
            return
        import os

        rank = dist.get_rank() if dist.is_initialized() else 0
        os.makedirs(local_path, exist_ok=True)
        torch.save({k: (v.cpu() if torch.is_tensor(v) else v) for k, v in self.adam.state_dict().items()},
                   os.path.join(local_path, CAPO_STATE_FILE.format(rank=rank)))

    def load(self, local_path: str) -> bool:
        """Restore the Adam model saved by :meth:`save` (built here if no forward has run yet)."""
        import os

        rank = dist.get_rank() if dist.is_initialized() else 0
        path = os.path.join(local_path, CAPO_STATE_FILE.format(rank=rank))
        if self.cfg.optimizer_model != "adam" or not os.path.exists(path):
            return False
        state = torch.load(path, weights_only=True)
        if self.adam is None:
            vocab, hidden = state["m"].shape
            dev = next(self.engine.module.parameters()).device
            self.adam = AdamLogitModel(vocab, hidden, self.cfg.adam_beta1, self.cfg.adam_beta2, self.cfg.adam_eps, device=dev)
        self.adam.load_state_dict(state)
        return True

    # -- the loss --------------------------------------------------------------------------------
    def _packed(self, raw: torch.Tensor, data) -> torch.Tensor:
        """Raw hook layout -> the nested (per-sequence, full length) layout of ``log_probs``."""
        input_ids = data["input_ids"]
        offsets = input_ids.offsets()
        if raw.shape[0] == 1 and tu.get_non_tensor_data(data=data, key="use_remove_padding", default=True):
            values = raw[0, : int(offsets[-1])]
        else:
            lens = offsets.diff().tolist()
            values = torch.cat([raw[i, :n] for i, n in enumerate(lens)])
        return torch.nested.nested_tensor_from_jagged(values, offsets.to(values.device))

    def current_lr(self) -> float:
        return float(self.engine.optimizer.param_groups[0]["lr"])

    def __call__(self, model_output, data, dp_group=None):
        raw, self._raw = self._raw, None
        if raw is None:
            raise RuntimeError("CAPO: the LM-head hook captured nothing for this micro-batch (was install() called?)")
        self._dp_group = dp_group
        per_token = {k: no_padding_2_padding(self._packed(v, data), data) for k, v in raw.items()}
        log_prob = no_padding_2_padding(model_output["log_probs"], data).detach()
        padded = data.select("response_mask", "advantages").to_padded_tensor()
        response_mask = padded["response_mask"].bool()
        adv = padded["advantages"]
        lr = self.current_lr()
        extra: dict[str, float] = {}
        if self.cfg.top_k > 0:
            responses = data["responses"]
            responses = responses.to_padded_tensor(0) if responses.is_nested else responses
            responses = responses[:, : response_mask.shape[1]].to(per_token["topk_ids"].device)
            action = per_token["topk_ids"] == responses.unsqueeze(-1)
            pi = per_token["topk_pi"]
            pi_a = (pi * action).sum(-1)
            in_support = action.any(-1)
            extra["outside"] = float((response_mask & ~in_support).sum())
            if self.cfg.optimizer_model == "adam":
                self._hook_optimizer()
                sel = response_mask
                adv_tok = adv.expand_as(response_mask)[sel]
                flat = token_curvature_topk(adv_tok, per_token["topk_ids"][sel], pi[sel].double(), action[sel].double(),
                                            per_token["h"][sel], lr, self.adam, chunk=max(1, self.cfg.logits_chunk // 8))
                terms = {}
                for k, v in flat.items():
                    full = torch.zeros(response_mask.shape, dtype=torch.float64, device=v.device)
                    full[sel] = v
                    terms[k] = full
            else:
                terms = token_curvature(adv, pi_a.clamp_min(1e-30).log(), (pi * pi).sum(-1), (pi * pi * pi).sum(-1),
                                        per_token["h_norm2"], lr, in_support=in_support)
        else:
            pi_a = log_prob.exp()
            terms = token_curvature(adv, log_prob, per_token["sum_pi2"], per_token["sum_pi3"], per_token["h_norm2"], lr)
        masks = keep_mask(terms, self.cfg, lr)
        keep = response_mask & masks["keep"]
        if self.adam is not None and self.cfg.optimizer_model == "adam":
            self.adam.accumulate(token_gradients(adv.expand_as(response_mask)[keep].double(), per_token["topk_pi"][keep].double(),
                                                 action[keep].double(), per_token["h"][keep].double()),
                                 per_token["topk_ids"][keep], torch.ones(int(keep.sum()), dtype=torch.bool, device=keep.device))
            extra["adam_step"] = float(self.adam.t)
        masked_data = data.copy()
        masked_data["response_mask"] = keep.to(padded["response_mask"].dtype)
        loss, metrics = self.base_loss_fn(model_output=model_output, data=masked_data, dp_group=dp_group)
        summary = masked_summary(terms, masks, response_mask, adv, pi_a)
        summary.update(extra)
        metrics.update(self._metrics(summary, data, lr, self.cfg.thresholds(lr)))
        return loss, metrics

    @staticmethod
    def _metrics(summary: dict[str, float], data, lr: float, taus: tuple[float, float] = (0.0, 0.0)) -> dict[str, Metric]:
        """Means over the mini-batch's tokens: like verl's pg_loss, each micro-batch adds
        ``count / batch_num_tokens * dp_size`` (SUM over micro-batches, mean over dp ranks)."""
        total, dp = data["batch_num_tokens"], data["dp_size"]
        if total is None:  # local normalisation: mean of micro-batch means
            scale, agg = 1.0 / max(summary["valid_count"], 1.0), AggregationType.MEAN
        else:
            scale, agg = float(dp) / max(float(total), 1.0), AggregationType.SUM
        p = CAPO_METRIC_PREFIX
        out = {
            f"{p}masked_frac": Metric(agg, summary["masked_count"] * scale),
            f"{p}masked_frac_fisher": Metric(agg, summary["masked_fisher_count"] * scale),
            f"{p}masked_frac_hessian": Metric(agg, summary["masked_hessian_count"] * scale),
            f"{p}kl_mean": Metric(agg, summary["kl_sum"] * scale),
            f"{p}full_update_mean": Metric(agg, summary["full_update_sum"] * scale),
            f"{p}lr": Metric(AggregationType.MEAN, lr),
            f"{p}fisher_tau": Metric(AggregationType.MEAN, taus[0]),
            f"{p}hessian_tau": Metric(AggregationType.MEAN, taus[1]),
        }
        if "outside" in summary:
            out[f"{p}action_outside_topk"] = Metric(agg, summary["outside"] * scale)
        if "adam_step" in summary:
            out[f"{p}adam_step"] = Metric(AggregationType.MAX, summary["adam_step"])
        # masked fraction within each group (advantage sign, pi_a bin): MEAN of the micro-batches'
        # ratios (exact with one micro-batch per mini-batch), emitted only for non-empty groups
        for group in ("adv_pos", "adv_neg", *(name for name, _, _ in PI_BINS)):
            valid = summary.get(f"by/{group}/valid", 0.0)
            if valid > 0:
                out[f"{p}masked_frac_{group}"] = Metric(AggregationType.MEAN, summary[f"by/{group}/masked"] / valid)
                out[f"{p}share_{group}"] = Metric(agg, valid * scale)
        if "kl_max" in summary:
            out[f"{p}kl_max"] = Metric(AggregationType.MAX, summary["kl_max"])
            out[f"{p}full_update_max"] = Metric(AggregationType.MAX, summary["full_update_max"])
            out[f"{p}full_update_min"] = Metric(AggregationType.MIN, summary["full_update_min"])
            out[f"{p}hessian_abs_max"] = Metric(AggregationType.MAX, summary["hessian_abs_max"])
        return out


def install_capo(training_worker, cfg: CAPOConfig, actor_config=None) -> Optional[CAPOLoss]:
    """Wrap ``training_worker.loss_fn`` with CAPO when ``cfg.enable`` (returns the wrapper, else None).

    ``training_worker`` is verl's ``TrainingWorker`` (or the GXPO subclass) after ``set_loss_fn``.
    """
    if not cfg.enable:
        return None
    if training_worker.loss_fn is None:
        raise RuntimeError("install_capo: the worker has no loss function yet (call after set_loss_fn)")
    if isinstance(training_worker.loss_fn, CAPOLoss):
        return training_worker.loss_fn
    ec = training_worker.engine_config
    if getattr(ec, "use_fused_kernels", False) or training_worker.model_config.get("use_fused_kernels", False):
        raise ValueError("CAPO needs the LM-head logits: set actor_rollout_ref.model.use_fused_kernels=false")
    if actor_config is not None and getattr(actor_config, "ulysses_sequence_parallel_size", 1) > 1:
        raise ValueError("CAPO does not support Ulysses sequence parallelism (ulysses_sequence_parallel_size > 1)")
    wrapper = CAPOLoss(training_worker.loss_fn, cfg, training_worker.engine).install()
    training_worker.set_loss_fn(wrapper)
    return wrapper


__all__ = ["CAPOLoss", "CAPO_METRIC_PREFIX", "install_capo"]
