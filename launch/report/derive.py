"""Quantities derived from a run's history: the accuracy column of a metric spec, cumulative
backward passes, hours, validation curves, seed groups, interpolation at a budget, the first
validation point that reaches a threshold and the 95% Student-t interval over seeds."""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from launch import runmeta
from launch.report.metadata import ACCEL_ORDER, BENCHMARKS, METHOD_ORDER, MODEL_ORDER, Run

EPS = 1e-12

# two-sided 95% Student-t quantiles t_{0.975, df}; a df between two entries takes the lower one's
# (the wider interval), above 30 the normal 1.96
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


@dataclass
class Options:
    benchmarks: dict[str, str] = field(default_factory=lambda: dict(BENCHMARKS))
    n: int | None = None
    include_val_time: bool = False
    interp: str = "linear"
    #: statistic a bare data source (and "avg") stands for: "mean" = verl's mean@N (sampled pass@1),
    #: "pass@<k>" = the unbiased pass@k the gxpo_sync trainer logs, "pass" = its largest logged k
    stat: str = "mean"


def resolve_metric(hist: pd.DataFrame, spec: str, n: int | None = None, stat: str = "mean") -> str | None:
    """Column of ``hist`` for a metric spec (exact name, name without ``@N``, or a data source).

    A bare data source means ``val-core/<ds>/acc/<stat>``: with ``stat="mean"``
    ``val-core/<ds>/acc/mean@N`` (largest N, or ``n``), or ``val-core/<ds>/reward/mean@N`` when the
    reward function returned no ``acc`` (verl then makes ``reward`` the core variable); with
    ``stat="pass@16"`` that column exactly; ``stat="pass"`` the largest logged k."""
    if spec in hist.columns:
        return spec
    if not spec.startswith("val-"):
        if stat != "mean":
            return resolve_metric(hist, f"val-core/{spec}/acc/{stat}", None)
        return (resolve_metric(hist, f"val-core/{spec}/acc/mean", n)
                or resolve_metric(hist, f"val-core/{spec}/reward/mean", n))
    base = spec
    if "@" in base.rsplit("/", 1)[-1]:
        return base if base in hist.columns else None
    if n is not None:
        col = f"{base}@{n}"
        return col if col in hist.columns else None
    best = None
    for col in hist.columns:
        m = re.fullmatch(re.escape(base) + r"@(\d+)", col)
        if m and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), col)
    return best[1] if best else None


def backward_passes(run: Run) -> tuple[pd.Series, str]:
    hist = run.hist
    method = run.meta.get("method")
    cols = [f"{method}/backward_passes"] + [f"{r}/backward_passes" for r in runmeta.RULES]
    col = next((c for c in cols if c in hist.columns), None)
    if col is None:
        col = next((c for c in hist.columns if c.endswith("/backward_passes")), None)
    if col is not None:
        bp = hist[col].ffill()
        bp[bp.index <= 0] = bp[bp.index <= 0].fillna(0.0)
        return bp, "logged"
    per = runmeta.backward_passes_per_update(method, run.meta.get("K")) or 1
    inc = pd.Series(float(per), index=hist.index)
    if method == "gxpo" and "gxpo/active" in hist.columns:
        active = hist["gxpo/active"].ffill().fillna(1.0)
        inc = pd.Series(np.where(active > 0.5, 3.0, 1.0), index=hist.index)
    inc[inc.index <= 0] = 0.0
    return inc.cumsum(), "nominal"


def hours(run: Run, include_val_time: bool = False) -> pd.Series:
    hist = run.hist
    if "timing_s/step" in hist.columns:
        sec = hist["timing_s/step"].fillna(0.0)
        if include_val_time and "timing_s/testing" in hist.columns:
            sec = sec + hist["timing_s/testing"].fillna(0.0)
        sec[sec.index <= 0] = 0.0
        return sec.cumsum() / 3600.0
    if "_runtime" in hist.columns:
        h = hist["_runtime"].ffill() / 3600.0
        h[h.index <= 0] = 0.0
        return h
    return pd.Series(np.nan, index=hist.index)


def metric_series(run: Run, spec: str, opts: Options) -> pd.Series:
    """Accuracy (fraction) at the steps where the metric was logged."""
    hist = run.hist
    if spec == "avg":  # over exactly the configured benchmarks: none when a run did not log one
        cols = [resolve_metric(hist, ds, opts.n, opts.stat) for ds in opts.benchmarks]
        if not cols or not all(cols):
            return pd.Series(dtype=float)
        return hist[cols].dropna(how="any").mean(axis=1)
    col = resolve_metric(hist, spec, opts.n, opts.stat)
    if col is None:
        return pd.Series(dtype=float)
    return hist[col].dropna()


def curve(run: Run, spec: str, opts: Options) -> pd.DataFrame:
    """DataFrame indexed by validation step: acc, bp, hours."""
    acc = metric_series(run, spec, opts)
    bp, _ = backward_passes(run)
    hr = hours(run, opts.include_val_time)
    return pd.DataFrame({"acc": acc, "bp": bp.reindex(acc.index), "hours": hr.reindex(acc.index)})


def first_reach(c: pd.DataFrame, thr: float) -> dict | None:
    """The first validation point of curve ``c`` (:func:`curve`) with ``acc >= thr``:
    ``{"step", "hours", "bp"}`` (floats), or None (never reached, empty curve or non-finite ``thr``)."""
    if c is None or c.empty or not np.isfinite(thr):
        return None
    hit = c[c["acc"] >= thr - EPS]
    if hit.empty:
        return None
    step = int(hit.index[0])
    return {"step": float(step), "hours": float(hit["hours"].iloc[0]), "bp": float(hit["bp"].iloc[0])}


def t975(df: int) -> float:
    """The two-sided 95% Student-t quantile for ``df`` degrees of freedom (nan for df < 1)."""
    if df <= 0:
        return float("nan")
    if df > 30:
        return 1.96
    return _T975[max(k for k in _T975 if k <= df)]


def mean_ci95(values: Sequence[float | None]) -> tuple[float, float]:
    """(mean, half-width of the two-sided 95% Student-t interval) of the finite ``values`` (None and
    NaN left out); the half-width is nan for one value, both are nan for none."""
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, float("nan")
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
    return m, t975(len(vals) - 1) * sd / math.sqrt(len(vals))


@dataclass
class Group:
    key: tuple
    runs: list[Run]
    #: an explicit row name (e.g. ``launch.compare``'s ``grpo_lr1e-3``): :meth:`label` returns it, for
    #: rows whose configuration keys alone do not tell them apart
    name: str | None = None

    @property
    def model(self) -> str:
        return self.key[0]

    @property
    def method(self) -> str | None:
        return self.key[1]

    @property
    def K(self):
        return self.key[2]

    @property
    def alpha(self):
        return self.key[3]

    @property
    def variant(self) -> str | None:
        """GXPO's variant (``paper_text`` | ``authors``); None for the other rules."""
        return self.key[4]

    @property
    def accel(self) -> str | None:
        """The accelerator beside the update rule: ``capo``, ``next`` or None."""
        return self.key[5]

    @property
    def lora(self) -> int:
        """The LoRA rank (0: full-parameter training)."""
        return self.key[6]

    def label(self, show_alpha: bool = False, show_lora: bool = False, show_variant: bool = False) -> str:
        """``GXPO K=5``, ``CAPO+GXPO K=5``, ``NExt (LoRA GRPO)``; ``show_lora`` names the rank of a
        LoRA row (when its model has full-parameter rows too), ``show_variant`` GXPO's variant (when
        its model has GXPO rows of both). A group with a :attr:`name` is labelled with it."""
        if self.name is not None:
            return self.name
        return runmeta.method_title(self.method, None if self.method == "grpo" else self.K, self.accel,
                                    self.lora if show_lora else None, self.alpha if show_alpha else None,
                                    self.variant if show_variant else None)

    def is_reference_for(self, other: "Group") -> bool:
        """Whether this group is ``other``'s GRPO: same model, plain GRPO (no accelerator), same LoRA
        rank -- so NExt, which trains LoRA adapters, is measured against LoRA GRPO."""
        return (self.model == other.model and self.method == "grpo" and self.accel is None
                and self.lora == other.lora)

    def curve(self, spec: str, opts: Options) -> pd.DataFrame:
        """Seed-averaged curve on the validation steps every seed has."""
        curves = [curve(r, spec, opts) for r in self.runs]
        curves = [c for c in curves if len(c)]
        if not curves:
            return pd.DataFrame(columns=["acc", "bp", "hours"])
        if len(curves) == 1:
            return curves[0]
        steps = sorted(set.intersection(*[set(c.index) for c in curves]))
        return sum(c.loc[steps] for c in curves) / len(curves)

    def spread(self, spec: str, opts: Options) -> pd.DataFrame:
        """Per validation step every seed has: ``acc`` (mean over seeds), ``acc_min``, ``acc_max``,
        ``acc_std`` (population std; 0 for one seed), ``bp``, ``hours`` (seed means), ``seeds``."""
        curves = [c for c in (curve(r, spec, opts) for r in self.runs) if len(c)]
        cols = ["acc", "acc_min", "acc_max", "acc_std", "bp", "hours", "seeds"]
        if not curves:
            return pd.DataFrame(columns=cols)
        steps = sorted(set.intersection(*[set(c.index) for c in curves]))
        accs = np.stack([c.loc[steps, "acc"].to_numpy(float) for c in curves])
        out = pd.DataFrame(index=pd.Index(steps, name="step"))
        out["acc"] = accs.mean(axis=0)
        out["acc_min"] = accs.min(axis=0)
        out["acc_max"] = accs.max(axis=0)
        out["acc_std"] = accs.std(axis=0)
        for col in ("bp", "hours"):
            out[col] = np.mean([c.loc[steps, col].to_numpy(float) for c in curves], axis=0)
        out["seeds"] = len(curves)
        return out


_STAT_RE = re.compile(r"val-core/(?P<ds>.+)/(?P<var>acc|reward)/(?P<stat>mean|pass|best|maj)@(?P<n>\d+)(?P<tail>/mean)?")


def _stat_words(stat: str, n: str | None = None) -> str:
    if stat == "mean":
        return "pass@1"
    if stat.startswith("pass"):
        k = n or stat.partition("@")[2]
        return f"pass@{k}" if k else "pass@k"
    return f"{stat}@{n}"


def metric_label(spec: str, opts: Options) -> str:
    """The metric in words for axis labels and headings, e.g. ``"Math-500 pass@1 (%)"``."""
    if spec == "avg":
        return f"Average {_stat_words(opts.stat)} over {len(opts.benchmarks)} benchmarks (%)"
    if not spec.startswith("val-"):
        return f"{opts.benchmarks.get(spec, spec)} {_stat_words(opts.stat)} (%)"
    m = _STAT_RE.fullmatch(spec)
    if m is None:
        return f"{spec} (%)"
    title = opts.benchmarks.get(m.group("ds"), m.group("ds"))
    if m.group("var") == "reward":
        return f"{title} mean reward over {m.group('n')} samples (x100)"
    if m.group("stat") in ("best", "maj"):
        return f"{title} {m.group('stat')}@{m.group('n')} (verl bootstrap, %)"
    if m.group("stat") == "mean":
        return f"{title} pass@1 (%, mean of {m.group('n')} samples)"
    return f"{title} {_stat_words(m.group('stat'), m.group('n'))} (%)"


def sort_key(key: tuple):
    model, method, K, alpha, variant, accel, lora = key
    mi = MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER)
    vi = runmeta.GXPO_VARIANTS.index(variant) if variant in runmeta.GXPO_VARIANTS else 9
    return (mi, str(model), lora or 0, ACCEL_ORDER.get(accel, 9), METHOD_ORDER.get(method, 9), K or 0, vi, alpha or 0)


def reference_group(groups: Sequence[Group], g: Group) -> Group | None:
    """``g``'s GRPO among ``groups`` (see :meth:`Group.is_reference_for`), or None."""
    return next((r for r in groups if r.is_reference_for(g)), None)


def model_reference(groups: Sequence[Group], model: str) -> Group | None:
    """The model's plain GRPO for budgets shared by all its rows: full-parameter if it ran, else the
    smallest LoRA rank."""
    refs = [g for g in groups if g.model == model and g.method == "grpo" and g.accel is None]
    return min(refs, key=lambda g: g.lora) if refs else None


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Runs with the same (model, method, K, alpha, variant, accel, lora) form one group; their curves are averaged."""
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.key, []).append(r)
    for key, members in groups.items():
        seeds = [m.meta.get("seed") for m in members]
        if len(members) > 1 and len(set(map(str, seeds))) < len(seeds):
            warnings.warn(f"runs {[m.name for m in members]} share configuration {key} and seed(s) {seeds}: "
                          "averaged as repeats (pass fewer --runs if they are copies of one run)")
    return [Group(k, groups[k]) for k in sorted(groups, key=sort_key)]


def _show_alpha(groups: Sequence[Group]) -> bool:
    for g in groups:
        if g.method in runmeta.DEFAULT_ALPHA and g.alpha is not None and \
                not math.isclose(g.alpha, runmeta.DEFAULT_ALPHA[g.method]):
            return True
    return False


def _show_lora(groups: Sequence[Group], g: Group) -> bool:
    """Name the LoRA rank of ``g`` when its model has rows of another rank (full-parameter included)."""
    return len({x.lora for x in groups if x.model == g.model}) > 1


def _show_variant(groups: Sequence[Group], g: Group) -> bool:
    """Name GXPO's variant of ``g`` when its model has GXPO rows of more than one variant."""
    return g.method == "gxpo" and len({x.variant for x in groups if x.model == g.model and x.method == "gxpo"}) > 1


def distinguish(groups: Sequence[Group], g: Group) -> dict[str, bool]:
    """The ``show_*`` flags of :meth:`Group.label` that tell ``g`` apart from its model's other rows."""
    return {"show_lora": _show_lora(groups, g), "show_variant": _show_variant(groups, g)}


def _base_cols(g: Group, show_alpha: bool, show_lora: bool = False, show_variant: bool = False) -> dict[str, Any]:
    d = {"Model": g.model, "Method": runmeta.method_title(g.method, None, g.accel, g.lora if show_lora else None,
                                                          variant=g.variant if show_variant else None),
         "K": "–" if g.method == "grpo" or g.K is None else g.K}
    if show_alpha:
        d["α"] = "–" if g.method == "grpo" or g.alpha is None else g.alpha
    return d


def interp_at(x: np.ndarray, y: np.ndarray, budget: float, rule: str = "linear") -> float:
    """Value of the curve (x ascending budgets, y accuracies) at ``budget``; NaN outside [x0, xn]."""
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    if len(x) == 0:
        return float("nan")
    # a budget that stays equal over several validation points: keep the latest of them
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    keep = np.r_[x[1:] != x[:-1], True]
    x, y = x[keep], y[keep]
    if budget < x[0] - EPS or budget > x[-1] + EPS:
        return float("nan")
    if rule == "previous":
        i = int(np.searchsorted(x, budget + EPS, side="right")) - 1
        return float(y[max(i, 0)])
    if rule != "linear":
        raise ValueError(f"unknown interpolation rule {rule!r}")
    return float(np.interp(budget, x, y))


