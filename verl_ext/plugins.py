"""Entry point verl imports at ``import verl`` (setuptools group ``verl.plugins``, name ``gxpo``).

verl/__init__.py loads every ``verl.plugins`` entry point at the end of its own import and swallows
(debug-logs) any exception, so everything here is guarded and logged at WARNING instead.

What it registers, and when (``import verl`` must stay cheap: it runs in every process):

* the CPU platform (:func:`verl_ext.platform.register_cpu_platform`), now: it only touches
  ``verl.plugin.platform`` (already imported by verl) and defers the heavier modules
  (``verl.utils.distributed``, ``verl.workers.engine``) to post-import hooks;
* the HF rollout (:func:`verl_ext.rollout.register_hf_rollout_on_import`), when verl's rollout
  registries are first imported (``verl.workers.rollout.base`` / ``.replica``), by post-import
  hooks: importing them here would cost ~1 s in every process;
* TransferQueue's named actors scoped per Ray job (:mod:`verl_ext.platform.tq_scope`), when its
  modules are imported.

Circular import: verl imports this module while ``verl`` itself is still initialising. If a user
imports this module *before* verl, the nested ``import verl`` re-enters this (partially
initialised) module, finds nothing to do, and the registration below runs once the outer import
resumes; all steps are idempotent.
"""

import logging

logger = logging.getLogger(__name__)


def load() -> None:
    """Register everything this project plugs into verl (idempotent)."""
    try:
        from verl_ext.platform import register_cpu_platform

        register_cpu_platform()
    except Exception:  # never break `import verl`
        logger.warning("verl_ext: CPU platform registration failed", exc_info=True)

    try:
        from verl_ext.rollout import register_hf_rollout_on_import

        register_hf_rollout_on_import()
    except Exception:  # never break `import verl`
        logger.warning("verl_ext: HF rollout registration failed", exc_info=True)

    try:  # one TransferQueue per Ray job (jobs sharing a cluster must not share or clash on it)
        from verl_ext.platform.tq_scope import scope_on_import

        scope_on_import()
    except Exception:  # never break `import verl`
        logger.warning("verl_ext: TransferQueue job scoping failed", exc_info=True)


load()
