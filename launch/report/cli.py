"""Command line of ``python -m launch.report`` (flags in the package docstring)."""

from __future__ import annotations

import argparse
from typing import Sequence

from launch import runmeta
from launch.report.build import DEFAULT_METRICS, build_report
from launch.report.derive import Options
from launch.report.metadata import BENCHMARKS


def _floats(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def parse_benchmarks(text: str | None) -> dict[str, str]:
    if not text:
        return dict(BENCHMARKS)
    out = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        ds, _, title = item.partition("=")
        out[ds.strip()] = title.strip() or BENCHMARKS.get(ds.strip(), ds.strip())
    return out


def _package_doc() -> str:
    import launch.report

    return launch.report.__doc__ or ""


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.report", description=_package_doc().split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="run log files or directories (searched recursively)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--metric", nargs="+", action="extend", default=None,
                   help="Table 2 / plot metrics: full names, names without @N, data sources, or 'avg' "
                        f"(default: {' '.join(DEFAULT_METRICS)})")
    p.add_argument("--benchmarks", default=None,
                   help="Table 1 columns as data_source=Title,... (default: "
                        + ",".join(f"{k}={v}" for k, v in BENCHMARKS.items()) + ")")
    p.add_argument("--n", type=int, default=None, help="use mean@N with this N (default: the largest logged)")
    p.add_argument("--table1-at", choices=("final", "best"), default="final")
    p.add_argument("--iso-bp", type=_floats, default=None, help="backward-pass budgets, e.g. 108,204,300")
    p.add_argument("--iso-hours", type=_floats, default=None, help="wall-clock budgets in hours, e.g. 4,8,12")
    p.add_argument("--interp", choices=("linear", "previous"), default="linear")
    p.add_argument("--include-val-time", action="store_true", help="count timing_s/testing in the hours")
    p.add_argument("--seed-key", default=runmeta.DEFAULT_SEED_KEY)
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    opts = Options(benchmarks=parse_benchmarks(args.benchmarks), n=args.n,
                   include_val_time=args.include_val_time, interp=args.interp)
    try:
        res = build_report(args.runs, args.out, args.metric, opts, args.table1_at, args.iso_bp, args.iso_hours,
                           plots=not args.no_plots, seed_key=args.seed_key)
    except FileNotFoundError as exc:
        p.error(str(exc))
    print(f"{len(res['runs'])} run(s), {len(res['groups'])} configuration(s); wrote:")
    for f in res["files"]:
        print(f"  {f}")
    return 0


