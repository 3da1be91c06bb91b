"""Accuracy curves against training steps, backward passes and hours (matplotlib, Agg backend)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from launch.report.derive import Group, Options, _show_alpha
from launch.report.markdown import slug


def plot_metric(groups: Sequence[Group], spec: str, opts: Options, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    show_alpha = _show_alpha(groups)
    models = list(dict.fromkeys(g.model for g in groups))
    curves = {g.key: g.curve(spec, opts) for g in groups}
    written = []
    for axis, xlabel in (("step", "training steps"), ("bp", "backward passes"), ("hours", "wall-clock hours")):
        ncol = min(2, len(models))
        nrow = math.ceil(len(models) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(6 * ncol, 4 * nrow), squeeze=False)
        for ax, model in zip(axes.flat, models):
            ref_peak = None
            for g in (g for g in groups if g.model == model):
                c = curves[g.key]
                if c.empty:
                    continue
                x = c.index.to_numpy(float) if axis == "step" else c[axis].to_numpy(float)
                style = "-" if g.method == "gxpo" else ("--" if g.method == "sfpo" else "-")
                lw = 2.2 if g.method == "grpo" else 1.4
                ax.plot(x, 100.0 * c["acc"].to_numpy(float), style, marker="o", ms=2.5, lw=lw,
                        label=g.label(show_alpha), color="black" if g.method == "grpo" else None)
                if g.method == "grpo":
                    cc = c[c.index >= 1]
                    if len(cc):
                        ref_peak = 100.0 * float(cc["acc"].max())
            if ref_peak is not None:
                ax.axhline(ref_peak, color="gray", ls=":", lw=1, label="GRPO peak")
            ax.set_title(model)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{spec} (%)")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(models):]:
            ax.set_visible(False)
        fig.tight_layout()
        path = out_dir / f"{slug(spec)}_vs_{axis}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


