"""Accuracy curves against training steps, backward passes and hours (matplotlib, Agg backend).

One panel per model, one line per configuration (method, K, alpha; CAPO / NExt rows dotted, SFPO
dashed; the model's plain GRPO black, a second (LoRA) GRPO grey, several others in colours). A
configuration with several seeds is drawn as the seed mean with a shaded band from the lowest to
the highest seed (on the validation steps all its seeds have). The y axis names the metric in words
(:func:`launch.report.derive.metric_label`, e.g. "Math-500 pass@1 (%)"); the black GRPO's peak is a
grey dotted line. :func:`draw_panel` draws one model's panel into a given Axes (``launch.compare``'s
``compare.png`` puts three of them, against steps, BP and hours, in one figure).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from launch.report.derive import Group, Options, _show_alpha, distinguish, metric_label, model_reference
from launch.report.markdown import slug

AXES = (("step", "Training steps"), ("bp", "Backward passes (cumulative)"), ("hours", "Wall-clock hours (training)"))


def axis_label(axis: str, opts: Options) -> str:
    """The x label of ``axis`` ("step" | "bp" | "hours")."""
    if axis == "hours" and opts.include_val_time:
        return "Wall-clock hours (training + validation)"
    return dict(AXES)[axis]


def draw_panel(ax, groups: Sequence[Group], spec: str, opts: Options, axis: str, show_alpha: bool | None = None,
               title: str | None = None) -> None:
    """Draw one model's ``groups`` into the matplotlib Axes ``ax``: ``spec`` against ``axis``, one line
    per group (seed mean; band: min..max over seeds), the model's plain GRPO black, its peak dotted."""
    show_alpha = _show_alpha(groups) if show_alpha is None else show_alpha
    ref_peak = None
    models = list(dict.fromkeys(g.model for g in groups))
    refs = [r for r in (model_reference(groups, m) for m in models) if r is not None]
    # a second plain GRPO (LoRA) is grey; several (launch.compare's step-size rows) take the colour cycle
    other_grpo = [g for g in groups if g.method == "grpo" and g.accel is None and not any(g is r for r in refs)]
    for g in groups:
        c = g.spread(spec, opts)
        if c.empty:
            continue
        x = c.index.to_numpy(float) if axis == "step" else c[axis].to_numpy(float)
        plain_grpo = g.method == "grpo" and g.accel is None
        style = "--" if g.method == "sfpo" else (":" if g.accel else "-")
        lw = 2.2 if plain_grpo else 1.4
        seeds = int(c["seeds"].iloc[0])
        label = g.label(show_alpha, **distinguish(groups, g)) + (
            f" (mean of {seeds} seeds, band: min-max)" if seeds > 1 else "")
        is_ref = any(g is r for r in refs)
        (line,) = ax.plot(x, 100.0 * c["acc"].to_numpy(float), style, marker="o", ms=2.5, lw=lw, label=label,
                          color="black" if is_ref else ("dimgray" if plain_grpo and len(other_grpo) == 1 else None))
        if seeds > 1:
            ax.fill_between(x, 100.0 * c["acc_min"].to_numpy(float), 100.0 * c["acc_max"].to_numpy(float),
                            color=line.get_color(), alpha=0.2, lw=0)
        if is_ref:
            cc = c[c.index >= 1]
            if len(cc):
                ref_peak = 100.0 * float(cc["acc"].max())
    if ref_peak is not None:
        ax.axhline(ref_peak, color="gray", ls=":", lw=1, label="GRPO peak")
    if title is not None:
        ax.set_title(title)
    ax.set_xlabel(axis_label(axis, opts))
    ax.set_ylabel(metric_label(spec, opts))
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)


def make_figure(groups: Sequence[Group], spec: str, opts: Options, axis: str):
    """The matplotlib figure of ``spec`` against ``axis`` ("step" | "bp" | "hours"): one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    show_alpha = _show_alpha(groups)
    models = list(dict.fromkeys(g.model for g in groups))
    ncol = min(2, max(1, len(models)))
    nrow = max(1, math.ceil(len(models) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(6 * ncol, 4 * nrow), squeeze=False)
    for ax, model in zip(axes.flat, models):
        draw_panel(ax, [g for g in groups if g.model == model], spec, opts, axis, show_alpha, title=model)
    for ax in list(axes.flat)[len(models):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def plot_metric(groups: Sequence[Group], spec: str, opts: Options, out_dir: Path) -> list[Path]:
    """``<out_dir>/<slug>_vs_{step,bp,hours}.png``; returns the paths written."""
    import matplotlib.pyplot as plt

    written = []
    for axis, _ in AXES:
        fig = make_figure(groups, spec, opts, axis)
        path = Path(out_dir) / f"{slug(spec)}_vs_{axis}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
