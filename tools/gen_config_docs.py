"""Generate docs/configuration.md from the config dataclasses (the only source of the project's keys),
the table of every Hydra group option in conf/README.md from the files under conf/, and the
recipe config's ``gxpo:`` and ``sfpo:`` blocks from ``GXPOConfig`` (with the per-variant alpha map from
``VARIANT_DEFAULTS``) and ``SFPOConfig``.

    python tools/gen_config_docs.py            # rewrite all three
    python tools/gen_config_docs.py --check    # exit 1 if any is out of date (tests/conf/test_config_docs.py)

Per-field docs convention: an *attribute docstring* -- a string literal on the line(s) right after the
field, as Sphinx autodoc reads them -- whose first paragraph says what the key means; optional lines
``range: ...`` (allowed values), ``source: ...`` (where the default comes from: the paper, the
authors' code or script, or chosen here) and ``metric: ...`` (the logged metric(s) it moves) follow::

    K: int = 5
    \"\"\"Virtual lookahead depth: how many optimizer steps the extrapolation predicts.

    range: integer >= 2
    source: chosen here
    metric: gxpo/scale_mean
    \"\"\"

Defaults come from the dataclass itself; a field whose default is ``None`` and that appears in the
module's ``VARIANT_DEFAULTS`` (knob -> one value per entry of ``GXPO_VARIANTS``) is shown with each
variant's default. A dataclass named in :data:`THEMES` is shown in themed tables (extrapolation,
ratio, gate, optimizer state, faults, diagnostics). The few keys that are not dataclass fields (``update_rule``, ``trainer.*``) are
described in :data:`OTHER_KEYS`, with their allowed values taken from the modules that validate
them. Only the standard library and the framework-free ``verl_ext.core`` / ``verl_ext.tracking`` /
``verl_ext.metrics`` modules are imported (pure torch, no verl).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "configuration.md"

# (dataclass, the key prefix it lives under in the Hydra config, what the section is)
SECTIONS = (
    ("verl_ext.core.config:GXPOConfig", "actor_rollout_ref.actor.gxpo",
     "read when `actor_rollout_ref.actor.update_rule=gxpo`"),
    ("verl_ext.core.config:SFPOConfig", "actor_rollout_ref.actor.sfpo",
     "read when `actor_rollout_ref.actor.update_rule=sfpo`"),
    ("verl_ext.core.capo:CAPOConfig", "actor_rollout_ref.actor.capo",
     "read when `actor_rollout_ref.actor.capo.enable=true`, with any `update_rule` (preset `method=capo`)"),
    ("verl_ext.core.next:NExtConfig", "actor_rollout_ref.actor.next",
     "read when `actor_rollout_ref.actor.next.enable=true`, with any `update_rule` (preset `method=next`)"),
)


# Themes of a section's keys, in the order they are shown (like TRL's grouped config docs). Every
# field of a themed dataclass must appear in exactly one theme (a new field fails the test until it
# is placed); a dataclass not listed here is shown as one table.
THEMES = {
    "GXPOConfig": (
        ("Extrapolation", "how far the update jumps (docs/algorithm.md#active-update)",
         ("K", "variant", "alpha", "scale_eps", "scale_guard", "scale_min", "scale_headroom")),
        ("Retention ratio", "what the ratio is formed from, where, and its clamp (docs/algorithm.md#variants)",
         ("ratio_source", "active_mode", "active_eps", "active_rel", "ratio_denominator", "ratio_min", "ratio_max",
          "ratio_nonfinite")),
        ("Shutoff gate", "when GXPO switches itself off (docs/algorithm.md#shutoff-gate)",
         ("shutoff", "shutoff_at", "gate_signal", "gate_stat", "ema_omega", "window", "warmup", "z_threshold",
          "z_eps", "two_sided", "trip_inclusive", "patience", "gate_granularity")),
        ("Optimizer state and passes", "what each pass starts from (docs/algorithm.md#variants)",
         ("optimizer_state", "recompute_old_log_probs")),
        ("Faults", "what a failed probe or a degenerate mini-batch does (docs/algorithm.md#faults)",
         ("on_failure", "min_probe_norm", "degenerate_skip_frac")),
        ("Memory and diagnostics", "(docs/algorithm.md#active-update, docs/algorithm.md#metrics)",
         ("host_buffers", "diagnose_every")),
    ),
}


def themes_of(cls) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """``cls``'s themes (title, what, field names); raises when a field is in none or in two."""
    names = [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]
    themes = THEMES.get(cls.__name__)
    if themes is None:
        return (("", "", tuple(names)),)
    placed = [n for _, _, fs in themes for n in fs]
    unplaced = [n for n in names if n not in placed]
    doubled = sorted({n for n in placed if placed.count(n) > 1})
    unknown = [n for n in placed if n not in names]
    if unplaced or doubled or unknown:
        raise ValueError(f"THEMES[{cls.__name__!r}] must place every field once: unplaced {unplaced}, "
                         f"placed twice {doubled}, not a field {unknown}")
    return themes


def _other_keys() -> tuple[tuple[str, str, str, str], ...]:
    """(key, meaning, allowed, default) of the project's keys that are not fields of the dataclasses above."""
    from verl_ext.core.config import UPDATE_RULES
    from verl_ext.tracking.console import CONSOLE_MODES

    return (
        ("actor_rollout_ref.actor.update_rule",
         "The update rule of every mini-batch update: plain single-pass GRPO/PPO, SFPO or GXPO. The "
         "recipe's config (recipe/gxpo/config/gxpo_trainer.yaml) sets `gxpo`; verl's own entry point and "
         "experimental trainers accept only `grpo`.",
         ", ".join(UPDATE_RULES), "`grpo` (dataclass), `gxpo` (recipe config)"),
        ("trainer.val_pass_at_k",
         "Extra k for the unbiased `val-core/<data_source>/acc/pass@<k>` the gxpo_sync trainer logs at "
         "validation (k = 1 and k = `rollout.val_kwargs.n` are always logged; verl_ext/metrics/pass_at_k.py).",
         "null, an integer >= 1 or a list of them", "`[]`"),
        ("trainer.console",
         "Console output: `concise` prints one line per step (verl_ext/tracking/console.py); `full` keeps "
         "verl's line with every metric. The file / wandb / ... loggers always receive every metric.",
         ", ".join(CONSOLE_MODES), "`concise`"),
        ("trainer.preempt_grace_s",
         "After SIGTERM (preemption), how long the driver waits for the current training step to end and its "
         "checkpoint to be saved before it stops the run anyway; it exits with status 75 either way "
         "(recipe/gxpo/preemption.py, README \"Resume and preemption\").",
         "seconds >= 0 (0: no limit)", "`600`"),
    )


@dataclasses.dataclass
class FieldDoc:
    name: str
    meaning: str = ""
    range: str = ""
    metric: str = ""
    source: str = ""


def _load(target: str):
    module_name, qualname = target.split(":")
    module = importlib.import_module(module_name)
    return module, getattr(module, qualname)


def field_docs(cls) -> dict[str, FieldDoc]:
    """Attribute docstrings of ``cls``'s fields, parsed from its source (see the module docstring)."""
    return field_docs_from_source(inspect.getsource(cls))


def field_docs_from_source(source: str) -> dict[str, FieldDoc]:
    """Field name -> :class:`FieldDoc` for the first class defined in ``source``."""
    body = ast.parse(textwrap.dedent(source)).body[0].body
    out: dict[str, FieldDoc] = {}
    for stmt, nxt in zip(body, [*body[1:], None]):
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        if not (isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            continue
        out[stmt.target.id] = _parse(stmt.target.id, inspect.cleandoc(nxt.value.value))
    return out


def _parse(name: str, doc: str) -> FieldDoc:
    fd = FieldDoc(name)
    meaning: list[str] = []
    for line in doc.splitlines():
        key, _, rest = line.partition(":")
        if key.strip().lower() in ("range", "metric", "source") and rest.strip():
            setattr(fd, key.strip().lower(), rest.strip())
        else:
            meaning.append(line)
    fd.meaning = " ".join(" ".join(meaning).split())
    return fd


def _fmt(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else str(value)


def _default(module, cls, f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return "(required)"
    variants = getattr(module, "GXPO_VARIANTS", None)
    table = getattr(module, "VARIANT_DEFAULTS", {})
    if value is None and variants and f.name in table and cls.__name__.startswith("GXPO"):
        return " · ".join(f"{v}: `{_fmt(x)}`" for v, x in zip(variants, table[f.name]))
    return f"`{_fmt(value)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|") if text else "—"


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "<!-- generated by tools/gen_config_docs.py from the config dataclasses; do not edit by hand -->",
        "",
        "Every key this project adds to verl's configuration, most under `actor_rollout_ref.actor`. verl's",
        "own keys are documented by verl. `update_rule` selects the rule; the `gxpo`, `sfpo`, `capo` and",
        "`next` sections are validated at start-up whatever the rule, and a bad value stops the run before",
        "Ray starts with an error naming the key, the value and what is allowed. Unknown keys in a section",
        "are rejected. Set keys on the command line, e.g. `actor_rollout_ref.actor.gxpo.K=3`, or pick a",
        "preset: `method=gxpo_k5`. See docs/algorithm.md for what the knobs do.",
        "",
        "## Other keys",
        "",
        "| key | meaning | allowed | default |",
        "|---|---|---|---|",
        *(f"| `{k}` | {_cell(m)} | {_cell(a)} | {d} |" for k, m, a, d in _other_keys()),
        "",
    ]
    for target, prefix, when in SECTIONS:
        module, cls = _load(target)
        docs = field_docs(cls)
        summary = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0].replace("\n", " ")
        lines += [f"## `{prefix}` ({cls.__name__})", "", f"{summary} Keys are {when}.", ""]
        by_name = {f.name: f for f in dataclasses.fields(cls)}
        missing = []
        for title, what, names in themes_of(cls):
            if title:
                lines += [f"### {title}", "", f"{what[:1].upper()}{what[1:]}.", ""]
            lines += ["| key | meaning | allowed | default | source of the default | metric it moves |",
                      "|---|---|---|---|---|---|"]
            for name in names:
                d = docs.get(name)
                if d is None:
                    missing.append(name)
                    d = FieldDoc(name)
                lines.append(f"| `{name}` | {_cell(d.meaning)} | {_cell(d.range)} | "
                             f"{_default(module, cls, by_name[name])} | {_cell(d.source)} | {_cell(d.metric)} |")
            lines.append("")
        if missing:
            lines += [f"Not documented on `{cls.__name__}` yet (no field docstring): "
                      + ", ".join(f"`{m}`" for m in missing) + ".", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


# ------------------------------------------------------------------------------ conf/README.md
CONF_DIR = ROOT / "conf"
CONF_README = CONF_DIR / "README.md"
RECIPE_CONFIG = ROOT / "recipe" / "gxpo" / "config" / "gxpo_trainer.yaml"
OPTIONS_BEGIN = "<!-- options: generated by tools/gen_config_docs.py from conf/*/*.yaml; do not edit by hand -->"
OPTIONS_END = "<!-- end of generated options -->"


def group_defaults() -> dict[str, str | None]:
    """Group -> its default option in the recipe config's ``defaults`` list (None: nothing selected)."""
    import yaml

    out: dict[str, str | None] = {}
    for entry in yaml.safe_load(RECIPE_CONFIG.read_text())["defaults"]:
        if isinstance(entry, dict):
            out.update(entry)
    return out


def option_summary(path: Path) -> str:
    """The first sentence of an option file's header comment (``# @package`` lines skipped)."""
    words: list[str] = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text.startswith("@package"):
            continue
        if not text:
            if words:
                break
            continue
        words.append(text)
    para = " ".join(words)
    end = re.search(r"\.\s(?=[A-Z])", para)  # a sentence ends before a capital ("Figs. 4-5" does not)
    return para[: end.start() + 1] if end else para


def render_options() -> str:
    """The table of every option of every group under conf/, with the group's default."""
    defaults = group_defaults()
    lines = [OPTIONS_BEGIN, "", "| group | option | default | what it is (the file's first sentence) |", "|---|---|---|---|"]
    for group_dir in sorted(d for d in CONF_DIR.iterdir() if d.is_dir() and not d.name.startswith("_")):
        group = group_dir.name
        default = defaults.get(group, "(not in the defaults list)")
        for f in sorted(group_dir.glob("*.yaml")):
            mark = "yes" if f.stem == default else ""
            lines.append(f"| `{group}` | `{f.stem}` | {mark} | {_cell(option_summary(f))} |")
    lines += ["", "Defaults: " + ", ".join(f"`{g}`: " + (f"`{o}`" if o else "none (`null`)")
                                          for g, o in defaults.items() if (CONF_DIR / g).is_dir()) + ".", "", OPTIONS_END]
    return "\n".join(lines)


def render_conf_readme(current: str) -> str:
    """``current`` with its generated options block replaced by :func:`render_options`."""
    if OPTIONS_BEGIN not in current or OPTIONS_END not in current:
        raise SystemExit(f"{CONF_README.relative_to(ROOT)} lacks the markers {OPTIONS_BEGIN!r} ... {OPTIONS_END!r}")
    head, rest = current.split(OPTIONS_BEGIN, 1)
    tail = rest.split(OPTIONS_END, 1)[1]
    return head + render_options() + tail


# ------------------------------------------------------------ the recipe config's gxpo and sfpo blocks
# Every GXPOConfig / SFPOConfig key with its dataclass default, so that a plain dotted override
# (actor_rollout_ref.actor.gxpo.K=3, a sweep over it) composes without `+`: written here from the
# dataclasses, the one place the defaults are authored (a test keeps the file equal to this output).
# A GXPO knob whose default depends on the variant is null (the dataclass resolves it), except alpha:
# run names carry alpha, so the block holds a concrete alpha per variant (a Hydra interpolation cannot
# call the dataclass) in a ``_variant_alpha`` map written from VARIANT_DEFAULTS.
def _block(key: str) -> re.Pattern:
    return re.compile(rf"^(?P<indent>[ \t]*){key}:\n(?:(?P=indent)[ \t]+\S.*\n)*", re.M)


GXPO_BLOCK, SFPO_BLOCK = _block("gxpo"), _block("sfpo")


def _yaml_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return _fmt(value)


def _gxpo_block(ind: str) -> str:
    from verl_ext.core.config import GXPO_VARIANTS, VARIANT_DEFAULTS, GXPOConfig

    docs = field_docs(GXPOConfig)
    mapping = ", ".join(f"{v}: {_fmt(a)}" for v, a in zip(GXPO_VARIANTS, VARIANT_DEFAULTS["alpha"]))
    lines = [f"{ind}gxpo:",
             f"{ind}  # every GXPOConfig key (verl_ext/core/config.py: meaning, range, source), written by",
             f"{ind}  # tools/gen_config_docs.py; null = the variant's default (docs/configuration.md). alpha",
             f"{ind}  # follows the variant unless set (run names carry it); keys starting with _ are ignored."]
    for f in dataclasses.fields(GXPOConfig):
        rng = docs[f.name].range if f.name in docs else ""
        if f.name == "alpha":
            lines.append(f"{ind}  _variant_alpha: {{{mapping}}}")
            lines.append(f"{ind}  alpha: ${{._variant_alpha.${{.variant}}}}  # {rng}")
            continue
        value = f.default_factory() if f.default is dataclasses.MISSING else f.default  # as declared, not resolved
        lines.append(f"{ind}  {f.name}: {_yaml_value(value)}" + (f"  # {rng}" if rng else ""))
    return "\n".join(lines) + "\n"


def _sfpo_block(ind: str) -> str:
    from verl_ext.core.config import SFPOConfig

    return f"{ind}sfpo:\n" + "".join(f"{ind}  {f.name}: {_yaml_value(getattr(SFPOConfig(), f.name))}\n"
                                     for f in dataclasses.fields(SFPOConfig))


def render_recipe_config(current: str) -> str:
    """``current`` (the recipe config's text) with its ``gxpo:`` block written from ``GXPOConfig`` /
    ``VARIANT_DEFAULTS`` and its ``sfpo:`` block from ``SFPOConfig``."""
    for name, pattern, render in (("gxpo", GXPO_BLOCK, _gxpo_block), ("sfpo", SFPO_BLOCK, _sfpo_block)):
        if not pattern.search(current):
            raise SystemExit(f"{RECIPE_CONFIG.relative_to(ROOT)} has no '{name}:' block under actor")
        current = pattern.sub(lambda m, render=render: render(m.group("indent")), current, count=1)
    return current


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/configuration.md is out of date")
    args = parser.parse_args(argv)
    conf_current = CONF_README.read_text()
    outputs = {OUTPUT: render(), CONF_README: render_conf_readme(conf_current),
               RECIPE_CONFIG: render_recipe_config(RECIPE_CONFIG.read_text())}
    if args.check:
        stale = [p for p, text in outputs.items() if (p.read_text() if p.exists() else "") != text]
        for p in stale:
            print(f"{p.relative_to(ROOT)} is out of date: run python tools/gen_config_docs.py", file=sys.stderr)
        return 1 if stale else 0
    for p, text in outputs.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        print(f"wrote {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
