"""Entry point verl imports at ``import verl`` (setuptools group ``verl.plugins``, name ``gxpo``).

verl/__init__.py loads every ``verl.plugins`` entry point at the end of its own import and swallows
(debug-logs) any exception, so everything here is guarded and logged at WARNING instead.

Circular import: verl imports this module while ``verl`` itself is still initialising. Nothing
here imports verl at module top level except through :func:`verl_ext.platform.register_cpu_platform`,
which only touches ``verl.plugin.platform`` (already imported by then) and defers everything heavier
(``verl.utils.distributed``, ``verl.workers.engine``) to post-import hooks. If a user imports this
module *before* verl, the nested ``import verl`` re-enters this (partially initialised) module,
finds nothing to do, and the registration below runs once the outer import resumes; all steps are
idempotent.
"""

import logging

logger = logging.getLogger(__name__)

_loaded = False


def load() -> None:
    """Register everything this project plugs into verl (idempotent)."""
    global _loaded
    try:
        from verl_ext.platform import register_cpu_platform

        register_cpu_platform()
    except Exception:  # never break `import verl`
        logger.warning("verl_ext: CPU platform registration failed", exc_info=True)

    try:
        from verl_ext.rollout import register_hf_rollout
    except ImportError as e:
        logger.warning("verl_ext: HF rollout not registered (%s)", e)
    else:
        try:
            register_hf_rollout()
        except Exception:
            logger.warning("verl_ext: HF rollout registration failed", exc_info=True)
    _loaded = True


load()
