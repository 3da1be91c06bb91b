"""A Hugging Face ``generate`` rollout backend for verl 0.9.1 (``actor_rollout_ref.rollout.name=hf``).

verl 0.9.1 only generates through *server* rollouts (vLLM, SGLang, TensorRT-LLM). This package adds a
fourth one whose engine is ``transformers``' ``model.generate``, so the real trainer pipeline (Ray,
agent loop, reward, reference KL, advantages, actor update, validation, checkpoints) runs on a
CPU-only machine. It also runs on a GPU (the server takes the GPU of the trainer rank it is colocated
with), but it is meant for small models and tests, not for speed.

How it plugs into verl (no verl source is modified)
---------------------------------------------------
verl looks a rollout backend up in two registries, keyed by ``rollout.name``:

1. ``verl.workers.rollout.replica.RolloutReplicaRegistry`` (public ``register(name, loader)``):
   ``LLMServerManager`` (driver / TaskRunner process) asks it for the replica class and builds one
   :class:`HFReplica` per rollout replica. In the hybrid engine (the default sync v1 trainer,
   ``LLMServerManager._initialize_llm_servers`` -> ``RolloutReplica.init_hybrid``) the replica gets the
   slice of the actor/rollout worker group it serves and its :meth:`HFReplica.launch_servers` starts
   one named Ray actor, :class:`HFRolloutServer`, next to the first worker of the slice (same node;
   on a GPU it uses that worker's GPU). Its handle is the ``server_handle`` that verl's load balancer
   hands to the agent loop, which calls ``server.generate.remote(prompt_ids=..., sampling_params=...,
   request_id=...)`` once per sample (``rollout.n`` / ``val_kwargs.n`` are separate requests) and
   expects a :class:`~verl.workers.rollout.replica.TokenOutput` (response token ids + log-probs).
   The replica's ``sleep`` / ``wake_up`` / ``abort_all_requests`` / ``resume_generation`` / kv-cache
   calls (from ``CheckpointEngineManager``) are forwarded to the server (base-class behaviour).
2. ``verl.workers.rollout.base._ROLLOUT_REGISTRY`` (a module-level dict read by
   ``get_rollout_class(name, mode)``; verl has no public register function for it, so
   :func:`verl_ext.rollout.register_hf_rollout` adds the ``("hf", "async")`` entry to that dict --
   the only "patch", a dict insertion; nothing is monkey-patched). ``ActorRolloutRefWorker.init_model`` (every trainer rank)
   instantiates the class found there, :class:`HFServerAdapter`, as ``self.rollout``.

Weights. With the default ``rollout.checkpoint_engine.backend=naive`` (the colocated / hybrid
path that ``PPOTrainerSync`` uses), ``CheckpointEngineManager.update_weights`` calls
``ActorRolloutRefWorker.update_weights`` on every rank after each actor update (and once after init),
which calls ``self.rollout.resume(tags=["weights"])``, then
``self.rollout.update_weights(engine.get_per_tensor_param(), global_steps=...)`` and finally
``self.rollout.resume(tags=["kv_cache"])``. :meth:`HFServerAdapter.update_weights` drains that
generator on every rank (the FSDP all-gathers inside it are collective), and the replica's leader
rank (``rollout_rank == 0``) ships the full tensors in buckets of
``checkpoint_engine.update_weights_bucket_megabytes`` to its server through Ray
(:meth:`HFRolloutServer.update_weights_bucket`), which copies them into the live HF model. So every
rollout samples from the current policy. After the rollout the sync trainer calls
``sleep_replicas()``: on a GPU the server moves the model to host memory (``free_cache_engine``) and
brings it back at the next ``resume``; on CPU sleep/wake are no-ops. ``rollout.load_format=dummy``
(verl's default) builds the server model from the config with random weights, because the first
weight sync (``PPOTrainerSync.on_init_end``) overwrites them; any other value loads the checkpoint at
``model.path``. Other checkpoint-engine backends (``nccl``, ...) also work in principle: verl then
creates ``CheckpointEngineWorker`` actors that hold an :class:`HFServerAdapter` and call the same
``update_weights``; only ``delta_sharded`` is rejected by verl itself for non-vLLM/SGLang rollouts.

Sampling (per request, matching what the agent loop sends): ``temperature`` (0 -> greedy),
``top_k`` (<= 0 -> off), ``top_p``, ``repetition_penalty``, ``logprobs`` (from
``rollout.calculate_log_probs``), optional ``max_tokens`` / ``max_new_tokens``. The response budget
is ``min(response_length, prompt_length + response_length - len(prompt), max_model_len -
len(prompt))`` as in verl's TRT-LLM server. Generation stops at any EOS id of the model (config,
generation config and tokenizer, unless ``rollout.ignore_eos``); the EOS token is part of the response.
Validation uses ``val_kwargs`` because the agent loop puts them into ``sampling_params``. Log-probs
follow ``rollout.logprobs_mode``: ``processed_logprobs`` (default; log-softmax after temperature,
top-k and top-p, i.e. the distribution actually sampled from; for greedy requests the raw one, as
vLLM does), ``raw_logprobs``, ``processed_logits`` or ``raw_logits``.

Batching. Requests that arrive concurrently (the agent loop fires a whole batch at once) are queued
and served together by one left-padded ``generate`` call: the queue is collected until no request
arrived for ``batch_wait_ms`` (or ``max_batch_size`` requests / ``max_wait_ms`` elapsed). Per-request
sampling parameters, budgets and log-probs are handled row-wise by :class:`RowwiseSampler` (a
``LogitsProcessor``) and :class:`RowwiseStop` (a ``StoppingCriteria``), so a batch can mix e.g.
training and greedy validation requests. ``generate`` itself runs with ``do_sample=True`` and no
built-in warpers; the row-wise processor does temperature / top-k / top-p and turns greedy rows into
one-hot distributions.

Options (``+actor_rollout_ref.rollout.engine_kwargs.hf.<key>=...``, all optional):
``dtype`` (default float32 on CPU, ``rollout.dtype`` on an accelerator), ``attn_implementation``
(default: the model config's unless it is a flash-attention one that cannot run here, then
``sdpa``), ``max_batch_size`` (default ``rollout.max_num_seqs``), ``batch_wait_ms`` (20),
``max_wait_ms`` (500), ``num_threads`` (``torch.set_num_threads`` in the server; default: leave
torch's), ``num_cpus`` (Ray CPUs the server actor reserves; default 0 so that it never blocks
scheduling on a small machine).

Threads and logs. Ray starts actors with ``OMP_NUM_THREADS=1``, so the server generates on one
thread unless ``engine_kwargs.hf.num_threads`` is set (one thread is fastest for tiny models on a
busy 2-core machine; raise it for real models when the trainer ranks are idle during the rollout,
as they are in the sync trainer). With ``VERL_LOGGING_LEVEL=INFO`` the server logs, at each
``sleep`` (once per step in the sync trainer), the requests, batches, tokens and seconds spent in
``generate`` since the previous step, and the adapter logs each weight sync.

Running verl's trainer on CPU with it (besides data / model paths; the v1 sync trainer). The
embedded task ``conf/experiment/cpu_arithmetic.yaml`` sets these (one training process,
``tensor_model_parallel_size=1``) and ``tests/recipe/test_e2e_recipe.py`` runs it end to end;
``tests/rollout/test_hf_rollout.py`` tests the engine, server and adapter::

    actor_rollout_ref.rollout.name=hf
    actor_rollout_ref.rollout.tensor_model_parallel_size=1     # verl's default is 2
    actor_rollout_ref.rollout.agent.num_workers=1              # default 8 agent-loop actors
    +actor_rollout_ref.model.override_config.attn_implementation=sdpa
    actor_rollout_ref.actor.strategy=fsdp2 actor_rollout_ref.ref.strategy=fsdp2
    transfer_queue.backend.SimpleStorage.num_data_storage_units=1
    trainer.n_gpus_per_node=N +ray_kwargs.ray_init.num_gpus=N  # logical GPUs = training processes
    ray_kwargs.ray_init.num_cpus=16                            # logical CPUs (one per Ray actor)
    # rollout.mode=async and rollout.checkpoint_engine.backend=naive are verl's defaults

plus the CPU platform plugin (:mod:`verl_ext.platform`) and, when a Ray cluster file from an earlier
``ray start`` exists on the machine, ``RAY_ADDRESS=local`` so that ``ray.init`` starts a fresh one.

Modules (the seams of verl's own rollout packages, server apart from adapter)
-----------------------------------------------------------------------------
* :mod:`.sampling` -- :class:`GenerationRequest` / :class:`GenerationResult`, the row-wise
  ``LogitsProcessor`` (:class:`RowwiseSampler`) and ``StoppingCriteria`` (:class:`RowwiseStop`);
  torch and transformers only.
* :mod:`.engine` -- :class:`HFGenerationEngine`: the HF model, weight loading, batched ``generate``
  (no Ray).
* :mod:`.server` -- :class:`HFRolloutServer`: the Ray actor of one replica (request queue,
  batching, weight-sync endpoints, sleep / wake-up / abort).
* :mod:`.adapter` -- :class:`HFServerAdapter`: the ``BaseRollout`` in every trainer rank.
* :mod:`.replica` -- :class:`HFReplica`: the ``RolloutReplica`` that starts the server.
* :mod:`.common` -- the rollout name, the server's Ray actor name, the ``engine_kwargs.hf`` options.

Every public name is re-exported here (``from verl_ext.rollout.hf_rollout import HFReplica``).

Not supported: multi-modal inputs, un-merged LoRA adapters (use ``model.lora.merge=True``), the
``delta_flush`` weight wire format, an OpenAI-compatible HTTP endpoint (the server is token-in /
token-out only; ``server_address`` is a unique id, not a URL).
"""

from .adapter import HFServerAdapter
from .common import ROLLOUT_NAME, engine_kwargs, server_actor_name
from .engine import HFGenerationEngine, collect_eos_ids
from .replica import HFReplica
from .sampling import (
    LOGPROB_MODES,
    GenerationRequest,
    GenerationResult,
    RowwiseSampler,
    RowwiseStop,
)
from .server import HFRolloutServer

__all__ = [
    "LOGPROB_MODES",
    "ROLLOUT_NAME",
    "GenerationRequest",
    "GenerationResult",
    "HFGenerationEngine",
    "HFReplica",
    "HFRolloutServer",
    "HFServerAdapter",
    "RowwiseSampler",
    "RowwiseStop",
    "collect_eos_ids",
    "engine_kwargs",
    "server_actor_name",
]
