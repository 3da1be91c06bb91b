"""Tables 1 and 2 and the iso-budget comparisons as typed rows (dataclasses), and as DataFrames
(one column per field, the layout of the paper's tables) for CSV/markdown output."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from launch import runmeta
from launch.report.derive import (
    Group,
    Options,
    _base_cols,
    _show_alpha,
    distinguish,
    first_reach,
    group_runs,
    interp_at,
    model_reference,
    reference_group,
    resolve_metric,
)
from launch.report.metadata import Run


TABLE1_AT = ("final", "best")


@dataclass
class Table1Row:
    """One row of Table 1: a (model, method, K, alpha, accel, lora) configuration, its seeds averaged.

    ``accuracy`` maps each benchmark's data source to the seed mean (a fraction, NaN when a seed
    lacks it); every seed contributes ALL its benchmarks from ONE evaluation step (``steps``, one
    per seed). ``avg`` is the mean over exactly the configured benchmarks (``Options.benchmarks``, the
    paper's five by default); NaN when the row lacks one of them (shown as "incomplete").
    ``complete`` is False when a seed stopped before its configured total steps (``total_steps``),
    None when no seed's configuration says.
    """

    model: str
    method: str | None
    K: int | None
    alpha: float | None
    variant: str | None
    accel: str | None
    lora: int
    bp_per_update: int | None
    accuracy: dict[str, float]
    avg: float
    steps: tuple[int, ...]
    total_steps: tuple[int | None, ...]
    complete: bool | None
    runs: tuple[str, ...]

    @property
    def seeds(self) -> int:
        return len(self.runs)

    @property
    def step_text(self) -> str:
        """The evaluation step(s) as shown: ``"300"``, ``"290/300"`` for seeds at different steps,
        with ``" (of 300: stopped early)"`` when a seed did not reach its configured total."""
        text = "/".join(str(s) for s in dict.fromkeys(self.steps))
        if self.complete is False:
            totals = "/".join(str(t) for t in dict.fromkeys(t for t in self.total_steps if t is not None))
            text += f" (of {totals}: stopped early)"
        return text


def _as_groups(runs_or_groups: Sequence[Run] | Sequence[Group]) -> list[Group]:
    items = list(runs_or_groups)
    if items and isinstance(items[0], Run):
        return group_runs(items)
    return items  # type: ignore[return-value]


def table1_step(run: Run, opts: Options, at: str = "final") -> tuple[int, dict[str, str]] | None:
    """(evaluation step, {data source: column}) Table 1 reads ``run`` at, or None.

    The step is one at which every benchmark the run ever logged was evaluated: the last such step
    (``at="final"``), or the one with the best mean over them among steps >= 1 (``at="best"``).
    """
    if at not in TABLE1_AT:
        raise ValueError(f"table1 at={at!r}: choose from {', '.join(TABLE1_AT)}")
    cols = {ds: resolve_metric(run.hist, ds, opts.n, opts.stat) for ds in opts.benchmarks}
    present = {ds: c for ds, c in cols.items() if c}
    if not present:
        return None
    frame = run.hist[list(present.values())].dropna(how="any")
    if frame.empty:
        warnings.warn(f"run {run.name!r}: its benchmarks were never evaluated at one common step; "
                      "left out of Table 1")
        return None
    if at == "best":
        frame = frame[frame.index >= 1] if (frame.index >= 1).any() else frame
        step = int(frame.mean(axis=1).idxmax())
    else:
        step = int(frame.index.max())
    return step, present


def table1_rows(runs_or_groups: Sequence[Run] | Sequence[Group], at: str = "final",
                opts: Options | None = None) -> list[Table1Row]:
    """Table 1 as typed rows (see :class:`Table1Row`, :func:`table1_step`), in the paper's order."""
    opts = opts or Options()
    rows: list[Table1Row] = []
    for g in _as_groups(runs_or_groups):
        per_seed = []
        for run in g.runs:
            chosen = table1_step(run, opts, at)
            if chosen is None:
                continue
            step, cols = chosen
            vals = {ds: float(run.hist.at[step, cols[ds]]) if ds in cols else float("nan")
                    for ds in opts.benchmarks}
            per_seed.append((run, step, vals))
        if not per_seed:
            continue
        acc = {ds: float(np.mean([v[ds] for _, _, v in per_seed])) for ds in opts.benchmarks}
        flags = [r.complete for r, _, _ in per_seed]
        complete = None if all(f is None for f in flags) else all(f is not False for f in flags)
        rows.append(Table1Row(
            model=g.model, method=g.method, K=g.K, alpha=g.alpha, variant=g.variant, accel=g.accel, lora=g.lora,
            bp_per_update=runmeta.backward_passes_per_update(g.method, g.K), accuracy=acc, avg=float("nan"),
            steps=tuple(s for _, s, _ in per_seed), total_steps=tuple(r.total_steps for r, _, _ in per_seed),
            complete=complete, runs=tuple(r.name for r, _, _ in per_seed)))
    for r in rows:  # over exactly the configured benchmarks: a row missing one has no average
        vals = [r.accuracy[ds] for ds in opts.benchmarks]
        r.avg = float(np.mean(vals)) if vals and all(np.isfinite(vals)) else float("nan")
    return rows


def table1(groups: Sequence[Group], opts: Options, at: str = "final") -> pd.DataFrame:
    """Table 1 in the paper's layout (percent): Model | Method | K | (α) | BP | Step | benchmarks |
    Avg. | seeds | complete. Benchmark columns no run logged are dropped."""
    show_alpha = _show_alpha(groups)
    by_key = {g.key: g for g in groups}
    rows = []
    for r in table1_rows(groups, at, opts):
        g = by_key[(r.model, r.method, r.K, r.alpha, r.variant, r.accel, r.lora)]
        row = _base_cols(g, show_alpha, **distinguish(groups, g))
        row["BP"] = r.bp_per_update
        row["Step"] = r.step_text
        for ds, title in opts.benchmarks.items():
            row[title] = 100.0 * r.accuracy[ds]
        row["Avg."] = 100.0 * r.avg
        row["seeds"] = r.seeds
        row["complete"] = r.complete
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df = df.drop(columns=[t for t in opts.benchmarks.values() if t in df.columns and df[t].isna().all()])
    return df


@dataclass
class Table2Row:
    """One row of Table 2 for one metric: peak accuracy (fraction) over validation steps >= 1, and
    the step / hours / cumulative backward passes of the FIRST validation step reaching its GRPO's
    peak (``threshold``), with speedups GRPO's value / this row's (NaN: not reached).

    Its GRPO (``reference``) is the same model's plain GRPO with the same LoRA rank
    (:meth:`Group.is_reference_for`): NExt rows are measured against LoRA GRPO. Hours are the sum of
    ``timing_s/step``, which holds every cost of the actor update -- NExt's predictor fits included
    (their own total is ``extra_seconds``, over ``extra_events`` events); CAPO's mask costs no
    backward pass."""

    model: str
    method: str | None
    K: int | None
    alpha: float | None
    variant: str | None
    accel: str | None
    lora: int
    reference: str
    peak_acc: float
    steps_to_match: float
    hours_to_match: float
    bps_to_match: float
    step_speedup: float
    time_speedup: float
    bp_speedup: float
    reached: bool
    threshold: float
    extra_seconds: float = float("nan")
    extra_events: float = float("nan")


_T2_COLUMNS = (("Peak Acc.", "peak_acc"), ("Steps to match GRPO", "steps_to_match"), ("Step speedup", "step_speedup"),
               ("Hours to match GRPO", "hours_to_match"), ("Time speedup", "time_speedup"),
               ("BPs to match GRPO", "bps_to_match"), ("BP speedup", "bp_speedup"), ("reached", "reached"),
               ("threshold", "threshold"), ("vs", "reference"), ("NExt predictor s", "extra_seconds"),
               ("NExt events", "extra_events"))

#: cumulative cost counters of an accelerator (logged by verl_ext.workers.next_hook)
EXTRA_COST = {"next": ("next/predictor_seconds_total", "next/events")}


def extra_cost(g: Group) -> tuple[float, float]:
    """(seconds, events) of ``g``'s accelerator outside the update rule, seed mean of each run's last
    logged value; NaN for rows without one."""
    cols = EXTRA_COST.get(g.accel)
    if not cols:
        return float("nan"), float("nan")
    out = []
    for col in cols:
        vals = [float(r.hist[col].dropna().iloc[-1]) for r in g.runs if col in r.hist.columns and r.hist[col].notna().any()]
        out.append(float(np.mean(vals)) if vals else float("nan"))
    return out[0], out[1]


def table2_rows(runs_or_groups: Sequence[Run] | Sequence[Group], spec: str,
                opts: Options | None = None) -> list[Table2Row]:
    """Table 2 for metric ``spec`` as typed rows (seed-averaged curves)."""
    opts = opts or Options()
    groups = _as_groups(runs_or_groups)
    rows: list[Table2Row] = []
    curves = {g.key: g.curve(spec, opts) for g in groups}
    show = {g.key: distinguish(groups, g) for g in groups}
    for g in groups:
        c = curves[g.key]
        c = c[c.index >= 1]
        if c.empty:
            continue
        ref = reference_group(groups, g)
        if ref is None:
            warnings.warn(f"{g.model} {g.label(show_lora=True)}: no GRPO run with the same model and LoRA rank "
                          f"({g.lora}) to measure it against; its steps/hours/BPs to GRPO's peak are left empty")
        ref_c = curves[ref.key] if ref else None
        ref_c = ref_c[ref_c.index >= 1] if ref_c is not None else None
        thr = float(ref_c["acc"].max()) if ref_c is not None and len(ref_c) else float("nan")
        ref_match = first_reach(ref_c, thr) if ref_c is not None else None
        hit = first_reach(c, thr)
        vals: dict[str, float] = {}
        for field_, ratio in (("step", "step_speedup"), ("hours", "time_speedup"), ("bp", "bp_speedup")):
            val = hit[field_] if hit is not None else np.nan
            ref_val = ref_match[field_] if ref_match is not None else np.nan
            vals[field_] = val
            vals[ratio] = (ref_val / val) if (hit is not None and ref_match is not None and val) else np.nan
        extra_s, extra_n = extra_cost(g)
        rows.append(Table2Row(
            model=g.model, method=g.method, K=g.K, alpha=g.alpha, variant=g.variant, accel=g.accel, lora=g.lora,
            reference=ref.label(**show[ref.key]) if ref else "-", peak_acc=float(c["acc"].max()),
            steps_to_match=vals["step"], hours_to_match=vals["hours"], bps_to_match=vals["bp"],
            step_speedup=vals["step_speedup"], time_speedup=vals["time_speedup"],
            bp_speedup=vals["bp_speedup"], reached=hit is not None, threshold=thr,
            extra_seconds=extra_s, extra_events=extra_n))
    return rows


def table2(groups: Sequence[Group], spec: str, opts: Options) -> pd.DataFrame:
    """Table 2 in the paper's layout (columns of :class:`Table2Row` under their titles)."""
    show_alpha = _show_alpha(groups)
    by_key = {g.key: g for g in groups}
    rows = []
    for r in table2_rows(groups, spec, opts):
        g = by_key[(r.model, r.method, r.K, r.alpha, r.variant, r.accel, r.lora)]
        row = _base_cols(g, show_alpha, **distinguish(groups, g))
        d = asdict(r)
        row.update({title: d[name] for title, name in _T2_COLUMNS})
        rows.append(row)
    df = pd.DataFrame(rows)
    if not df.empty and not any(g.accel in EXTRA_COST for g in groups):
        df = df.drop(columns=["NExt predictor s", "NExt events"])  # no row has such a cost
    return df


def iso_table(groups: Sequence[Group], opts: Options, axis: str, budgets: Sequence[float] | None) -> pd.DataFrame:
    """Long form: one row per (run group, budget) with a column per benchmark and Avg. (percent)."""
    show_alpha = _show_alpha(groups)
    rows = []
    for model in dict.fromkeys(g.model for g in groups):
        mg = [g for g in groups if g.model == model]
        ref = model_reference(groups, model)
        if budgets:
            bud = [float(b) for b in budgets]
        else:
            if ref is None:
                continue
            rc = pd.concat([ref.curve(ds, opts) for ds in opts.benchmarks]) if opts.benchmarks else None
            if rc is None or rc.empty or rc[axis].dropna().empty:
                continue
            last_step = rc.index.max()
            bud = [float(rc.loc[[last_step], axis].iloc[0])]
        for g in mg:
            ccurves = {ds: g.curve(ds, opts) for ds in opts.benchmarks}
            if all(c.empty for c in ccurves.values()):
                continue
            for b in bud:
                row = _base_cols(g, show_alpha, **distinguish(groups, g))
                row["budget"] = b
                for ds, title in opts.benchmarks.items():
                    c = ccurves[ds]
                    row[title] = 100.0 * interp_at(c[axis].to_numpy(float), c["acc"].to_numpy(float), b,
                                                   opts.interp) if not c.empty else np.nan
                rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    # Avg. over exactly the configured benchmarks (NaN: "incomplete" when a row lacks one), then the
    # columns no row has are dropped
    df["Avg."] = df[list(opts.benchmarks.values())].mean(axis=1, skipna=False)
    titles = [t for t in opts.benchmarks.values() if t in df.columns and df[t].notna().any()]
    df = df.drop(columns=[t for t in opts.benchmarks.values() if t in df.columns and t not in titles])
    return df


