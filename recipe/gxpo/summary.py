"""End-of-run summary, read back from verl's file logger (one ``{"step", "data"}`` JSON object a line)."""

from __future__ import annotations

import glob
import math
import os

from recipe.gxpo import run_layout


def read_metrics(path: str) -> list[dict]:
    """Rows of one metrics file, or of every metrics segment of a run directory
    (:func:`recipe.gxpo.run_layout.read_metrics`), each with its step under ``_step``."""
    return [dict(data, _step=step) for step, data in run_layout.read_metrics(path).items()]


def _val_keys(rows: list[dict]) -> list[str]:
    keys = sorted({k for r in rows for k in r if k.startswith("val-core/") and "/acc/mean@" in k})
    return keys


def summarize(metrics_path: str, ckpt_dir: str, update_rule: str, note: str | None = None) -> str:
    """The run's summary from its metrics folder/file; ``note`` (e.g. why nothing was trained this
    time) is printed first."""
    rows = read_metrics(metrics_path)
    lines = ["", "=" * 72, f"GXPO recipe run finished (update_rule={update_rule})"]
    if note:
        lines.append(f"NOTE: {note}")
    if not rows:
        lines.append(f"no metrics found at {metrics_path}")
    else:
        steps = [r["_step"] for r in rows if r.get("_step") is not None]
        lines.append(f"training steps logged: {max(steps) if steps else 0}")
        for key in _val_keys(rows):
            vals = [(r["_step"], r[key]) for r in rows if key in r and isinstance(r[key], (int, float)) and not math.isnan(r[key])]
            if vals:
                lines.append(f"{key}: start {vals[0][1]:.3f} (step {vals[0][0]})  ->  end {vals[-1][1]:.3f} (step {vals[-1][0]})"
                             f"  best {max(v for _, v in vals):.3f}")
        for k in (f"{update_rule}/backward_passes", f"{update_rule}/optimizer_steps", f"{update_rule}/shutoff_update"):
            vals = [r[k] for r in rows if k in r]
            if vals:
                lines.append(f"{k}: {vals[-1]:g}")
        t = sum(r.get("timing_s/step", 0.0) for r in rows)
        lines.append(f"training wall-clock (sum of timing_s/step): {t:.1f} s")
    ckpts = sorted(glob.glob(os.path.join(ckpt_dir, "global_step_*")), key=lambda p: int(p.rsplit("_", 1)[-1]))
    lines.append(f"checkpoints: {ckpt_dir}" + (f" (latest: {os.path.basename(ckpts[-1])})" if ckpts else " (none saved)"))
    lines.append(f"metrics log: {metrics_path}")
    lines.append("=" * 72)
    return "\n".join(lines)
