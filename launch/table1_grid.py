"""The paper's Table 1 grid, read from its one source, ``conf/sweep/table1.yaml``.

``MODELS`` (``conf/base_model`` options) x ``METHODS`` (``conf/method`` options), each run with
``EXPERIMENT`` (a ``conf/experiment`` option); ``PAPER_ROWS[model]`` lists the methods the paper's
printed table shows for that model (all of ``METHODS`` when the YAML does not restrict it).
Used by ``launch.sweep --preset table1`` / ``launch.paper_table1`` and by ``launch.report``.
"""

from __future__ import annotations

from importlib import resources

import yaml

SOURCE = "conf/sweep/table1.yaml"


def _load() -> dict:
    with resources.files("conf").joinpath("sweep", "table1.yaml").open() as f:
        return yaml.safe_load(f)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


_RAW = _load()
MODELS: list[str] = _csv(_RAW["hydra"]["sweeper"]["params"]["base_model"])
METHODS: list[str] = _csv(_RAW["hydra"]["sweeper"]["params"]["method"])
EXPERIMENT: str = _RAW["gxpo_table1"]["experiment"]
PAPER_ROWS: dict[str, list[str]] = {m: list(_RAW["gxpo_table1"].get("paper_rows", {}).get(m, METHODS)) for m in MODELS}
