"""Tables and plots of the GXPO paper from the metrics that runs logged.

    python -m launch.report --runs DIR [DIR ...] --out OUT_DIR
        [--metric val-core/math500/acc/mean@16 ...] [--benchmarks math500=Math-500,amc23=AMC23,...]
        [--n 16] [--table1-at final|best] [--iso-bp 108,204,300] [--iso-hours 4,8,12]
        [--interp linear|previous] [--include-val-time] [--seed-key data.seed] [--no-plots]

Inputs (``--runs`` takes files or directories, searched recursively)
--------------------------------------------------------------------
1. verl's file logger (``trainer.logger`` containing ``file``; ``verl/utils/tracking.py::FileLogger``):
   one JSON object per ``Tracking.log`` call, ``{"step": <int>, "data": {<metric>: <value>, ...}}``,
   written to ``$VERL_FILE_LOGGER_PATH`` or else
   ``${VERL_FILE_LOGGER_ROOT:-.}/<trainer.project_name>/<trainer.experiment_name>.jsonl``.
   The logger truncates its file when it starts, so ``launch.submit --log-dir`` gives every
   submission its own ``<log_dir>/<run>/metrics-<stamp>.jsonl``; all ``metrics*.jsonl`` files of
   one directory are read as segments of ONE run (named after the directory; later files win on
   overlapping steps). Any other ``*.jsonl`` is one run named after its file stem.
2. A simple JSONL: ``{"step": <int>, <metric>: <value>, ...}`` per line (``_step`` or
   ``training/global_step`` are accepted as the step key). Files whose lines carry no numeric metric
   with a ``/`` in its name (e.g. verl's generation dumps) are ignored.
3. wandb run directories ``.../wandb/{offline-run,run}-<date>-<id>/``: ``files/wandb-history.jsonl``
   (one ``{"_step": s, ...}`` per row) when present (older wandb), else the binary ``run-<id>.wandb``
   (current wandb writes only that offline): its LevelDB-style log records are decoded with wandb's
   own protobuf ``Record`` (``history`` and ``run``/``config`` records). Runs with the same display
   name inside one ``wandb/`` directory (resumed runs) are merged. A wandb run whose name equals a
   file-logger run's name is skipped (the file logger is preferred).

Run metadata (model, method = update rule, K, alpha, seed), first source that has a field wins:
``meta.json`` / ``<stem>.meta.json`` (explicit: {"model": ..., "method": ..., "K": ..., "alpha": ...}),
the saved config (Hydra ``.hydra/config.yaml`` in the run dir or under ``hydra/*/``, wandb's run
config, ``config.yaml``/``config.json``), Hydra's ``.hydra/hydra.yaml`` group choices
(``base_model=``, ``method=gxpo_k5``) and ``.hydra/overrides.yaml``, the launcher's ``launch-*.json``,
and last the run name (``launch.runmeta.meta_from_name``). Unset K/alpha take the defaults of docs/algorithm.md
(GXPO K=5, alpha=1.0; SFPO K=3, alpha=0.8). The configured total steps come from the config's
``trainer.total_training_steps`` (or ``total_steps`` in ``meta.json``).

Python API (one module per job: ``sources`` reads log files, ``metadata`` builds :class:`Run` s,
``derive`` computes curves, ``tables`` the typed rows, ``markdown``, ``plots``, ``build``,
``cli``)::

    runs = load_runs(paths)                                     # list[Run]
    rows = table1_rows(runs, at="final", opts=Options())        # list[Table1Row]
    t2 = table2_rows(runs, "val-core/math500/acc/mean@16")      # list[Table2Row]
    build_report(paths, out_dir, metrics, opts)                 # all files, as the CLI

Runs with the same (model, method, K, alpha) but different seeds are averaged (curves on the
steps all seeds evaluated).

Derived quantities per run
--------------------------
* step: ``training/global_step`` (the logger's ``step``); step 0 is the validation before training.
* backward passes: the logged cumulative ``<rule>/backward_passes`` (any ``*/backward_passes``),
  forward-filled; 0 at step 0. Without it, nominal: GRPO 1, SFPO K+1 per step, GXPO 3 per step
  while ``gxpo/active`` is 1 (3 when that metric is absent) and 1 after.
* hours: cumulative sum of ``timing_s/step`` / 3600 (training only: verl times validation separately
  as ``timing_s/testing``, which ``--include-val-time`` adds); wandb's ``_runtime`` when no step
  timing was logged. 0 at step 0.
* accuracy: ``val-core/<data_source>/acc/mean@N`` = mean over N samples per prompt, i.e. the
  sampled pass@1 the paper reports. A metric given without ``@N`` (or a bare data source such as
  ``math500``) takes the largest N the run logged (``--n`` to fix it; verl puts only the largest N
  under ``val-core``); a bare data source falls back to ``val-core/<ds>/reward/mean@N`` when the
  reward function returned no ``acc``. ``avg`` is the mean over exactly the Table 1 benchmarks
  (``--benchmarks``, the paper's five by default) at a step; a run that did not log every one of them
  has no ``avg`` (Table 1 shows "incomplete"). ``val-core/<ds>/acc/pass@<k>`` (logged by the project's ``gxpo_sync`` trainer, see
  ``verl_ext/metrics/pass_at_k.py``) is the unbiased pass@k; verl's ``best@k`` is a bootstrap.

Outputs (in OUT_DIR)
--------------------
* ``table1.{md,csv}``: Table 1 layout: Model | Method | K | BP | Step | one column per benchmark |
  Avg. | seeds, in percent (the CSV adds ``complete``). Each run contributes ALL its benchmarks from
  ONE evaluation step, shown in Step: the last step at which every benchmark it logged was
  evaluated (``--table1-at best``: the step with the best mean over them, steps >= 1). A run whose
  last step is below its configured ``trainer.total_training_steps`` is marked "stopped early".
  BP = nominal backward passes per update (GRPO 1, SFPO K+1, GXPO 3 while active). Avg. is the
  mean over the benchmark columns (empty when a run lacks one of them); benchmark columns no run
  logged are dropped. ``table1_pass<k>.{md,csv}``: the same with the unbiased pass@k
  (``val-core/<ds>/acc/pass@<k>``, largest k > 1 logged), when the runs logged it. Typed rows:
  :func:`launch.report.tables.table1_rows` / ``table2_rows``.
* ``table2_<metric>.{md,csv}`` per ``--metric``: Table 2 layout: Peak Acc. | Steps to match GRPO |
  Step speedup | Hours to match GRPO | Time speedup | BPs to match GRPO | BP speedup. Rules: only
  validation steps >= 1 count. GRPO's peak is the max of its validation accuracies; the threshold of
  every run of the same model is that peak. "to match" = the FIRST validation step whose accuracy is
  >= the threshold (GRPO: the step of its own first peak), with the run's hours and cumulative
  backward passes at that step (no interpolation: accuracy is only known at validation steps).
  Speedup = GRPO's value / the run's value (> 1 is faster). Runs that never reach it show "n/r".
* ``iso_bp.{md,csv}`` / ``iso_hours.{md,csv}``: accuracy (percent) of every run per benchmark and
  Avg. at equal budgets: by default GRPO's final backward-pass count (its cumulative count at its
  last validation step) and GRPO's final hours, per model; ``--iso-bp`` / ``--iso-hours`` give fixed
  budgets (the paper's C.1 and C.2: 108,204,300 BP and 4,8,12 h). Interpolation rule
  (``--interp``): ``linear`` (default) interpolates linearly in the budget between the two
  validation points around it (exact at a validation point); ``previous`` takes the last validation
  point at or below the budget (the checkpoint one would actually hold). Budgets before the first
  or after the last validation point are never extrapolated: the cell stays empty.
* ``plots/<metric>_vs_{step,bp,hours}.png``: accuracy vs training steps / backward passes / hours,
  one panel per model, one line per method/K/alpha (several seeds: their mean, with a min-max
  band), the y axis naming the metric in words ("Math-500 pass@1 (%)"), GRPO's peak dotted.
* ``runs.csv``: the runs found, their metadata and where each field came from; ``report.md``: all
  tables in one file.
"""
from launch.report.build import DEFAULT_METRICS, build_report
from launch.report.cli import main, parse_benchmarks
from launch.report.derive import (
    EPS,
    Group,
    Options,
    backward_passes,
    curve,
    first_reach,
    group_runs,
    hours,
    interp_at,
    mean_ci95,
    metric_label,
    metric_series,
    resolve_metric,
)
from launch.report.markdown import slug, to_markdown
from launch.report.metadata import BENCHMARKS, METHOD_ORDER, METHOD_TITLE, MODEL_ORDER, Run, load_runs
from launch.report.plots import plot_metric
from launch.report.sources import Source, discover, iter_wandb_records, read_jsonl, read_wandb_binary
from launch.report.plots import draw_panel, make_figure
from launch.report.tables import Table1Row, Table2Row, iso_table, table1, table1_rows, table1_step, table2, table2_rows

__all__ = [
    "BENCHMARKS", "DEFAULT_METRICS", "EPS", "Group", "METHOD_ORDER", "METHOD_TITLE", "MODEL_ORDER", "Options",
    "Run", "Source", "backward_passes", "build_report", "curve", "discover", "group_runs", "hours", "interp_at",
    "iso_table", "iter_wandb_records", "load_runs", "main", "metric_series", "parse_benchmarks", "plot_metric",
    "read_jsonl", "read_wandb_binary", "resolve_metric", "slug", "table1", "table2", "to_markdown",
    "Table1Row", "Table2Row", "table1_rows", "table1_step", "table2_rows", "make_figure", "metric_label",
    "draw_panel", "first_reach", "mean_ci95",
]
