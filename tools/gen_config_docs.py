"""Generate docs/configuration.md from the config dataclasses (the only source of the project's keys).

    python tools/gen_config_docs.py            # rewrite docs/configuration.md
    python tools/gen_config_docs.py --check    # exit 1 if it is out of date (tests/test_config_docs.py)

Per-field docs convention: an *attribute docstring* -- a string literal on the line(s) right after the
field, as Sphinx autodoc reads them -- whose first paragraph says what the key means; optional lines
``range: ...`` (allowed values) and ``metric: ...`` (the logged metric(s) it moves) follow::

    K: int = 5
    \"\"\"Virtual lookahead depth: how many optimizer steps the extrapolation predicts.

    range: integer >= 2
    metric: gxpo/scale_mean
    \"\"\"

Defaults come from the dataclass itself; a field whose default is ``None`` and that appears in the
module's ``VARIANT_DEFAULTS`` (knob -> one value per entry of ``GXPO_VARIANTS``) is shown with each
variant's default. The few keys that are not dataclass fields (``update_rule``, ``trainer.*``) are
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
        if key.strip().lower() in ("range", "metric") and rest.strip():
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
        lines += ["| key | meaning | allowed | default | metric it moves |", "|---|---|---|---|---|"]
        missing = []
        for f in dataclasses.fields(cls):
            if f.name.startswith("_"):
                continue
            d = docs.get(f.name)
            if d is None:
                missing.append(f.name)
                d = FieldDoc(f.name)
            lines.append(
                f"| `{f.name}` | {_cell(d.meaning)} | {_cell(d.range)} | {_default(module, cls, f)} | {_cell(d.metric)} |"
            )
        lines.append("")
        if missing:
            lines += [f"Not documented on `{cls.__name__}` yet (no field docstring): "
                      + ", ".join(f"`{m}`" for m in missing) + ".", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/configuration.md is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT.relative_to(ROOT)} is out of date: run python tools/gen_config_docs.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
