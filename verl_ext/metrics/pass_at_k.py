"""Unbiased pass@k from the n validation samples of each prompt (Chen et al., 2021, "Evaluating
Large Language Models Trained on Code", eq. 1).

For a prompt with ``n`` sampled answers of which ``c`` are correct,

    pass@k = 1 - C(n - c, k) / C(n, k)        (1 <= k <= n)

is the probability that at least one of ``k`` answers drawn WITHOUT replacement from the ``n`` is
correct; averaged over the prompts of a benchmark it is an unbiased estimate of the model's pass@k.
pass@1 equals the mean accuracy (verl's ``mean@n``) and pass@n is the fraction of prompts with at
least one correct answer.

verl's own ``best@k/mean`` is NOT this: it is a bootstrap WITH replacement (1000 draws of k of the
n values, max taken), so one correct answer in 16 gives best@16 = 1 - (15/16)^16 = 0.644 rather
than 1: draws with replacement repeat answers, so it underestimates pass@k.

:func:`pass_at_k_metrics` turns verl's validation lists (``data_sources``, ``sample_uids``, the
``acc`` column) into ``val-core/<data_source>/acc/pass@<k>`` entries; the trainer
(:meth:`verl_ext.workers.trainer.GXPOTrainerSync._val_metrics_update`) adds them to the
validation metrics verl logs. A sample counts as correct when its ``acc`` is at least 0.5 (the
project's rewards give 0 or 1); sessions that failed to produce a sample count as wrong, as verl
does for ``acc``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Mapping, Optional, Sequence

from verl_ext.core.config import ConfigError

__all__ = ["pass_at_k", "pass_at_k_metrics", "parse_pass_at_k_setting", "PASS_AT_K_KEY", "metric_name"]

#: Config key (under ``trainer``) with the extra k values to log besides 1 and n.
PASS_AT_K_KEY = "trainer.val_pass_at_k"


def pass_at_k(n: int, c: int, k: int) -> float:
    """``1 - C(n-c, k) / C(n, k)``: chance that k of the n answers (drawn without replacement)
    contain at least one of the c correct ones. Requires ``0 <= c <= n`` and ``1 <= k <= n``."""
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i), numerically stable for large n
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def metric_name(data_source: str, k: int) -> str:
    """The logged key, ``val-core/<data_source>/acc/pass@<k>``."""
    return f"val-core/{data_source}/acc/pass@{k}"


def parse_pass_at_k_setting(value: Any) -> tuple[int, ...]:
    """Validate ``trainer.val_pass_at_k`` (None, an int, or a list of ints >= 1)."""
    if value is None:
        return ()
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        items = list(items)
    except TypeError:
        raise ConfigError(PASS_AT_K_KEY, value, "a list of integers >= 1 (e.g. [1, 4, 16])") from None
    for k in items:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ConfigError(PASS_AT_K_KEY, value, "a list of integers >= 1 (e.g. [1, 4, 16])")
    return tuple(sorted(set(items)))


def pass_at_k_metrics(
    data_sources: Sequence[Any],
    sample_uids: Sequence[Any],
    acc: Sequence[Optional[float]],
    ks: Iterable[int],
    expected_counts: Optional[Mapping[tuple[str, str], int]] = None,
) -> dict[str, float]:
    """pass@k per data source, averaged over its prompts, for every k in ``ks``.

    Args:
        data_sources, sample_uids, acc: one entry per validation sample (verl's ``_validate``
            lists; ``acc`` is the reward's ``acc`` column, ``None`` where a sample has none).
        ks: the k values; a prompt with fewer than k samples is left out of pass@k (a benchmark
            whose prompts all have fewer gets no pass@k entry).
        expected_counts: verl's ``expected_acc_counts``, ``{(data_source, uid): n}``: samples a
            prompt should have had; the missing ones count as wrong.

    Returns:
        ``{"val-core/<data_source>/acc/pass@<k>": value}``.
    """
    if not (len(data_sources) == len(sample_uids) == len(acc)):
        raise ValueError(
            f"pass@k: {len(data_sources)} data sources, {len(sample_uids)} uids and {len(acc)} acc values"
        )
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])  # (n, c)
    for ds, uid, a in zip(data_sources, sample_uids, acc):
        if a is None:
            continue
        nc = counts[(str(ds), str(uid))]
        nc[0] += 1
        nc[1] += int(float(a) >= 0.5)
    sources_with_acc = {ds for ds, _ in counts}
    for (ds, uid), expected in (expected_counts or {}).items():
        key = (str(ds), str(uid))
        if key[0] in sources_with_acc:
            nc = counts[key]
            nc[0] = max(nc[0], int(expected))
    per_source: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for (ds, _), (n, c) in counts.items():
        per_source[ds].append((n, c))
    out: dict[str, float] = {}
    for ds, prompts in sorted(per_source.items()):
        for k in sorted(set(int(k) for k in ks)):
            vals = [pass_at_k(n, c, k) for n, c in prompts if n >= k]
            if vals:
                out[metric_name(ds, k)] = sum(vals) / len(vals)
    return out
