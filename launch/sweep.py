"""Submit a grid of runs (one Ray job per combination) through ``launch.submit``.

    python -m launch.sweep [--name-prefix P] --grid KEY=v1,v2 [--grid KEY=...] [--seeds 1,2]
                           [--preset table1 [--models ...] [--methods ...] [--paper-rows]]
                           [--max-concurrent N] [--skip-existing] [--dry-run] [--wait]
                           [submit flags: --address --env --log-dir ...] -- common overrides ...

Grid values use Hydra's sweep syntax: a comma list ``a,b,c`` (commas inside ``[]``, ``{}``, ``()`` or
quotes do not split), or ``range(start,stop[,step])``. The grid is the cartesian product in the
order the ``--grid`` flags are given (the last one varies fastest).

Run names: ``<prefix>_<model>_<token>_..._s<seed>`` with one token per grid key (``name_token`` of
``recipe.gxpo.run_layout``, the rule Hydra multiruns use too): the option name for ``base_model``,
``method``, ``experiment`` and ``...update_rule``; ``k<v>`` for ``.K``; ``a<v>`` for ``.alpha``;
``s<v>`` for a seed; else ``<last key segment><v>``. The model and the seed are always in the name
(from the grid, the overrides, or else the composed config's ``gxpo_run.model`` / model path and
``data.seed``), so one grid for two models or seeds in one log directory never collides; names that
still collide are refused before anything is submitted. ``launch.runmeta`` parses them back.

``--preset table1`` expands the paper's Table 1 (``launch.table1_grid``, read from
``conf/sweep/table1.yaml``): every model (Hydra group ``base_model=``) x every method (group
``method=``: GRPO, SFPO K=3/5/10, GXPO K=3/5/10), each with ``experiment=paper_math``
(``--experiment`` to change or ``none`` to drop). ``--paper-rows`` keeps the rows the paper reports
(Table 1 prints no K=10 for Qwen2.5-7B and Llama3.2-3B; Table 2 uses Llama3.2-3B's K=10 runs, so
they stay: 26 runs); ``--models`` / ``--methods`` filter the grid. Extra
``--grid`` keys multiply the preset. ``--methods`` takes any ``conf/method`` option, so the other
accelerators join the grid as extra rows on the same models and protocol:
``--methods grpo,gxpo_k5,capo,capo_gxpo_k5,next`` (``next`` needs LoRA: ``base_model=qwen2.5-7b``, or
``-- actor_rollout_ref.model.lora_rank=...`` and a ``grpo`` row with the same rank as its reference).

Before anything is submitted every job's config is composed and checked here
(:mod:`launch.precheck`; ``--no-precheck`` skips it): a sweep with one bad run submits none.

Why two sweep mechanisms: a Hydra multirun (``python -m recipe.gxpo.main_gxpo -m K=3,5``) runs its
jobs one after another in ONE process (one Ray job or one local Ray), fine for a workstation or one
allocation; this launcher submits one Ray job per run, so the cluster queues and runs them
independently, each with its own logs, status and resubmission (resume).

Queueing: by default every job is submitted at once. A job whose GPUs are held by earlier jobs waits
in its driver until they are free (printing what it waits for; ``trainer.resource_wait_s``, default
a day, bounds the wait, after which it fails saying so), so a grid larger than the cluster runs as
GPUs free up. Jobs running side by side are isolated (each has its own TransferQueue). ``--max-concurrent
N`` instead keeps at most N jobs on the cluster (this launcher then stays up until the last is
submitted). Transient Jobs API errors are retried with backoff (``launch.submit``).
Both give every run its own directory named from its swept values.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from typing import Any, Iterable, Sequence

from launch import runmeta, table1_grid
from launch import submit as sub
from recipe.gxpo.run_layout import name_token

# Hydra groups of conf/ (conf/base_model/*.yaml, conf/method/*.yaml, conf/experiment/*.yaml).
MODEL_GROUP = "base_model"
METHOD_GROUP = "method"
EXPERIMENT_GROUP = "experiment"
# The paper's Table 1 grid: one source, conf/sweep/table1.yaml
TABLE1_EXPERIMENT = table1_grid.EXPERIMENT
TABLE1_MODELS = table1_grid.MODELS
TABLE1_METHODS = table1_grid.METHODS
TABLE1_PAPER_ROWS = table1_grid.PAPER_ROWS
PRESETS = ("table1",)


def split_values(text: str) -> list[str]:
    """Split a Hydra-style sweep list at top-level commas; expand ``range(a,b[,s])``."""
    text = text.strip()
    if text.startswith("range(") and text.endswith(")"):
        try:
            nums = [int(x) for x in text[6:-1].split(",")]
        except ValueError as exc:
            raise sub.LaunchError(f"bad range in grid: {text!r} (integers only)") from exc
        if not 1 <= len(nums) <= 3:
            raise sub.LaunchError(f"bad range in grid: {text!r}")
        return [str(v) for v in range(*nums)]
    out, cur, depth, quote = [], [], 0, None
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    if quote or depth != 0:
        raise sub.LaunchError(f"unbalanced brackets or quotes in grid values: {text!r}")
    if any(v == "" for v in out):
        raise sub.LaunchError(f"empty value in grid list: {text!r}")
    return out


def parse_grid(items: Iterable[str]) -> list[tuple[str, list[str]]]:
    grid: list[tuple[str, list[str]]] = []
    seen = set()
    for item in items or ():
        if "=" not in item:
            raise sub.LaunchError(f"--grid {item!r}: expected KEY=v1,v2,...")
        key, values = item.split("=", 1)
        key = key.strip()
        if not key or not sub._OVERRIDE.match(f"{key}=x"):
            raise sub.LaunchError(f"--grid {item!r}: {key!r} is not a config key")
        if key.lstrip("+") in seen:
            raise sub.LaunchError(f"--grid {key}: given twice")
        seen.add(key.lstrip("+"))
        grid.append((key, split_values(values)))
    return grid


def expand(
    grid: Sequence[tuple[str, Sequence[str]]],
    prefix: str = "sweep",
) -> list[tuple[str, list[str]]]:
    """[(name, overrides)] for the cartesian product of ``grid``; the name is the prefix and one token
    per grid key (``build_runs`` adds the model and the seed)."""
    if not grid:
        return [(runmeta.sanitize(prefix), [])]
    keys = [k for k, _ in grid]
    runs = []
    for combo in itertools.product(*[vals for _, vals in grid]):
        overrides = [f"{k}={v}" for k, v in zip(keys, combo)]
        name = "_".join([runmeta.sanitize(prefix)] + [name_token(k, v) for k, v in zip(keys, combo)])
        runs.append((name, overrides))
    return runs


def refuse_collisions(names: Sequence[str]) -> None:
    dup = sorted({n for n in names if list(names).count(n) > 1})
    if dup:
        raise sub.LaunchError(f"run names collide: {dup} (two runs would share one run directory and submission "
                              "id); add the differing key to the grid or use --name-prefix")


def compose_defaults(overrides: Sequence[str], seed_key: str) -> dict[str, str]:
    """The model token and seed a run would get from the recipe's config with ``overrides``
    (composed here with Hydra, as the job will; nothing is resolved that needs the cluster)."""
    from omegaconf import OmegaConf

    from launch.precheck import recipe_composer

    try:
        with recipe_composer() as compose:
            cfg = compose(overrides)
    except Exception as exc:  # hydra's override / config errors: report them before submitting anything
        raise sub.LaunchError(f"the recipe's config does not compose with {list(overrides)}: {exc}") from exc
    model = OmegaConf.select(cfg, "gxpo_run.model", default=None)
    if not model:
        model = str(OmegaConf.select(cfg, runmeta.KEY_MODEL_PATH, default="model")).rstrip("/").split("/")[-1]
    return {"model": runmeta.sanitize(model), "seed": str(OmegaConf.select(cfg, seed_key, default=None))}


def _with_model_and_seed(name: str, prefix: str, overrides: Sequence[str], grid_keys: set[str], seed_key: str,
                         defaults) -> str:
    prefix = runmeta.sanitize(prefix)
    rest = name[len(prefix) + 1:] if name.startswith(prefix + "_") else ("" if name == prefix else name)
    tokens = [prefix] + ([rest] if rest else [])
    if not grid_keys & {MODEL_GROUP, "model", runmeta.KEY_MODEL_PATH}:
        meta = runmeta.meta_from_overrides(overrides)
        model = runmeta.sanitize(str(meta["model"]).rstrip("/").split("/")[-1]) if "model" in meta else None
        tokens.insert(1, model or defaults()["model"])
    if seed_key not in grid_keys:
        meta = runmeta.meta_from_overrides(overrides, seed_key=seed_key)
        tokens.append(name_token(seed_key, str(meta["seed"]) if "seed" in meta else defaults()["seed"]))
    return "_".join(tokens)


def _csv(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def method_options() -> list[str]:
    """The ``method=`` options of conf/ (``conf/method/*.yaml``): Table 1's rules and the extra rows
    (``capo``, ``capo_gxpo_k5``, ``next``)."""
    from importlib import resources

    return sorted(f.name[:-5] for f in resources.files("conf").joinpath(METHOD_GROUP).iterdir()
                  if f.name.endswith(".yaml"))


def preset_grid(
    preset: str,
    models: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    paper_rows: bool = False,
) -> list[tuple[str, list[str]]]:
    """[(name_suffix_tokens, overrides)] for a preset, before extra grid keys and seeds."""
    if preset != "table1":
        raise sub.LaunchError(f"--preset {preset!r}: known presets are {', '.join(PRESETS)}")
    models = list(models) if models else list(TABLE1_MODELS)
    methods = list(methods) if methods else list(TABLE1_METHODS)
    options = method_options()
    unknown_methods = [m for m in methods if m not in options]
    if unknown_methods:
        raise sub.LaunchError(f"--methods: unknown {unknown_methods}; the conf/method options are "
                              f"{', '.join(options)} (Table 1: {', '.join(TABLE1_METHODS)}; extra rows: "
                              f"{', '.join(o for o in options if o not in TABLE1_METHODS)})")
    out = []
    for model in models:
        for method in methods:
            if paper_rows and model in TABLE1_PAPER_ROWS and method not in TABLE1_PAPER_ROWS[model]:
                continue
            out.append(([runmeta.sanitize(model), runmeta.sanitize(method)],
                        [f"{MODEL_GROUP}={model}", f"{METHOD_GROUP}={method}"]))
    if not out:
        raise sub.LaunchError("the preset selection is empty (check --models/--methods)")
    return out


def build_runs(
    *,
    prefix: str,
    grid: Sequence[tuple[str, Sequence[str]]] = (),
    preset: str | None = None,
    models: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    paper_rows: bool = False,
    seeds: Sequence[str] | None = None,
    seed_key: str = runmeta.DEFAULT_SEED_KEY,
    experiment: str | None = None,
    common: Sequence[str] = (),
) -> list[tuple[str, list[str]]]:
    """[(run_name, overrides)]; ``experiment`` (a conf/experiment option) is prepended to every run,
    ``common`` (the overrides every run gets) decides the model / seed tokens the grid does not."""
    grid = list(grid)
    head = [f"{EXPERIMENT_GROUP}={experiment}"] if experiment else []
    if seeds:
        if any(k.lstrip("+") == seed_key for k, _ in grid):
            raise sub.LaunchError(f"--seeds and --grid {seed_key}=... both set the seed")
        grid.append((seed_key, list(seeds)))
    grid_keys = {k.lstrip("+") for k, _ in grid}
    if preset:
        runs = []
        for tokens, ovs in preset_grid(preset, models, methods, paper_rows):
            for name, extra in expand(grid, prefix="_".join([prefix] + tokens)):
                runs.append((name, head + ovs + extra))
        grid_keys |= {MODEL_GROUP, METHOD_GROUP}
    else:
        if models or methods:
            raise sub.LaunchError("--models/--methods filter a preset: add --preset table1 "
                                  "(or use --grid base_model=... --grid method=...)")
        if not grid:
            raise sub.LaunchError("nothing to sweep: give at least one --grid KEY=v1,v2 or --preset")
        runs = [(name, head + ovs) for name, ovs in expand(grid, prefix=prefix)]
    cache: dict[tuple, dict] = {}

    def defaults() -> dict:  # composed once per sweep, and only when the names need it
        key = tuple(head + list(common))
        if key not in cache:
            cache[key] = compose_defaults(key, seed_key)
        return cache[key]

    def named(name: str, ovs: list[str]) -> str:
        return _with_model_and_seed(name, prefix, ovs + list(common), grid_keys, seed_key, defaults)

    runs = [(named(name, ovs), ovs) for name, ovs in runs]
    refuse_collisions([n for n, _ in runs])
    return runs


def build_parser(prog: str = "python -m launch.sweep") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Submit one Ray job per grid combination (see launch.submit for the job layout).",
        epilog="Everything after '--' is added to every run as Hydra overrides.",
    )
    p.add_argument("--name-prefix", default=None, help="run name prefix (default: 'sweep', or the preset name)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=v1,v2",
                   help="a swept config key with its comma-separated values (repeatable)")
    p.add_argument("--preset", choices=PRESETS, default=None, help="expand a paper grid (table1)")
    p.add_argument("--models", default=None, help="comma list: only these preset models")
    p.add_argument("--methods", default=None, help="comma list: only these preset methods (e.g. grpo,gxpo_k5)")
    p.add_argument("--paper-rows", action="store_true",
                   help="table1: only the rows the paper reports (Table 1's 24, plus Table 2's Llama3.2-3B K=10 "
                        "runs: 26; drops Qwen2.5-7B K=10)")
    p.add_argument("--experiment", default=None,
                   help=f"conf/experiment option added to every run (default: {TABLE1_EXPERIMENT} with "
                        "--preset table1, none otherwise; 'none' to omit; skipped when an override sets it)")
    p.add_argument("--seeds", default=None, help="comma list of seeds (one run per seed)")
    p.add_argument("--seed-key", default=runmeta.DEFAULT_SEED_KEY, help="config key the seed is written to")
    p.add_argument("--max-concurrent", type=int, default=0,
                   help="at most N of these jobs pending or running at once (this launcher stays up, polling, "
                        "until the last is submitted). 0 (default): submit all at once; each job's driver then "
                        "waits for its GPUs while earlier jobs hold them (up to trainer.resource_wait_s, default "
                        "a day), so a grid larger than the cluster queues and finishes")
    p.add_argument("--poll-s", type=float, default=30.0, help="status poll interval for --max-concurrent/--wait")
    p.add_argument("--skip-existing", action="store_true",
                   help="skip runs whose submission id already exists on the cluster")
    p.add_argument("--unique-id", action="store_true", help="append a timestamp to each submission id")
    sub.add_common_args(p)
    p.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    return p


def run_sweep(jobs: list[dict[str, Any]], client, *, max_concurrent: int = 0, wait: bool = False,
              skip_existing: bool = False, poll_s: float = 30.0, address: str = "",
              log=None) -> dict[str, str]:
    """Submit ``jobs``; returns {submission_id: final or last known status}. Progress goes to stderr."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    existing: set[str] = set()
    if skip_existing:
        existing = {getattr(j, "submission_id", None)
                    for j in sub.call_retrying(client.list_jobs, what="listing the cluster's jobs")} - {None}
    results: dict[str, str] = {}
    running: list[str] = []

    def refresh() -> None:
        for sid in list(running):
            st = sub.job_status(client, sid)
            results[sid] = st
            if st in sub.TERMINAL:
                running.remove(sid)
                log(f"[sweep] {sid}: {st}")

    for job in jobs:
        sid = job["submission_id"]
        if sid in existing:
            log(f"[sweep] {sid}: exists on the cluster, skipped")
            results[sid] = "SKIPPED"
            continue
        while max_concurrent > 0 and len(running) >= max_concurrent:
            time.sleep(poll_s)
            refresh()
        try:
            sid = sub.submit(client, job)  # a resubmitted run's id gets a timestamp
        except RuntimeError as exc:
            log(f"[sweep] {sid}: submission failed: {exc}")
            results[sid] = "SUBMIT_FAILED"
            continue
        sub.save_launch_record(job, address)
        log(f"[sweep] submitted {sid}")
        results[sid] = "PENDING"
        running.append(sid)
    if wait:
        while running:
            time.sleep(poll_s)
            refresh()
    return results


def main(argv: Sequence[str] | None = None, client=None, default_preset: str | None = None,
         prog: str = "python -m launch.sweep") -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    flags, overrides = sub.split_argv(argv)
    parser = build_parser(prog)
    args = parser.parse_args(flags)
    preset = args.preset or default_preset
    overrides = list(args.overrides) + overrides
    prefix = args.name_prefix or (preset or "sweep")
    try:
        if args.max_concurrent < 0:
            raise sub.LaunchError("--max-concurrent must be >= 0")
        sub.validate_overrides(overrides)
        experiment = args.experiment if args.experiment is not None else (TABLE1_EXPERIMENT if preset else None)
        grid = parse_grid(args.grid)
        if experiment in ("none", "") or sub._has_key(overrides, EXPERIMENT_GROUP) or \
                any(k.lstrip("+") == EXPERIMENT_GROUP for k, _ in grid):
            experiment = None
        runs = build_runs(
            prefix=prefix,
            grid=grid,
            preset=preset,
            models=_csv(args.models),
            methods=_csv(args.methods),
            paper_rows=args.paper_rows,
            seeds=_csv(args.seeds),
            seed_key=args.seed_key,
            experiment=experiment,
            common=overrides,
        )
        jobs = [sub.job_from_args(args, name, ovs + overrides, metadata={"sweep": prefix}) for name, ovs in runs]
        sub.precheck(args, jobs)
    except sub.LaunchError as exc:
        parser.error(str(exc))
    if note := sub.gated_model_note(jobs):
        print(f"[launch.sweep] {note}", file=sys.stderr)
    address = sub.normalize_address(args.address)
    if args.dry_run:
        print(f"# dry run: {len(jobs)} job(s), would submit to {address}", file=sys.stderr)
        print(json.dumps([sub.redacted(j) for j in jobs], indent=2, sort_keys=True))
        return 0
    try:
        client = client or sub.make_client(address)
        results = run_sweep(jobs, client, max_concurrent=args.max_concurrent, wait=args.wait,
                            skip_existing=args.skip_existing, poll_s=args.poll_s, address=address)
    except RuntimeError as exc:
        print(f"launch.sweep: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(results, indent=2))
    bad = [s for s, st in results.items() if st in ("FAILED", "STOPPED", "SUBMIT_FAILED")]
    if bad:
        print(f"launch.sweep: {len(bad)} job(s) did not succeed: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
