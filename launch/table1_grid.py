"""The paper's Table 1 grid, read from its one source, ``conf/sweep/table1.yaml``.

``MODELS`` (``conf/base_model`` options) x ``METHODS`` (``conf/method`` options) come from that
file's ``hydra.sweeper.params`` (what ``-m experiment=paper_math sweep=table1`` runs), each run
with ``EXPERIMENT`` (a ``conf/experiment`` option). ``TABLE1_ROWS[model]`` lists the methods the
paper's printed Table 1 shows for that model (no K=10 for Qwen2.5-7B and Llama3.2-3B),
``TABLE2_ROWS`` the runs its Table 2 uses (Llama3.2-3B's K=10 among them), ``PAPER_ROWS`` both. Used by ``launch.sweep --preset table1`` / ``launch.paper_table1`` and
by ``launch.report``.
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
EXPERIMENT = "paper_math"
_PRINTED_WITHOUT_K10 = ("qwen2.5-7b", "llama3.2-3b")
#: the rows Table 1 prints
TABLE1_ROWS: dict[str, list[str]] = {
    m: [x for x in METHODS if not (m in _PRINTED_WITHOUT_K10 and x.endswith("_k10"))] for m in MODELS
}
#: the runs Table 2 (Llama3.2-3B: GRPO, SFPO and GXPO at K=3 and K=10) reads
TABLE2_ROWS: dict[str, list[str]] = {"llama3.2-3b": ["grpo", "sfpo_k3", "sfpo_k10", "gxpo_k3", "gxpo_k10"]}
#: every run the paper reports (``--paper-rows``): Table 1's rows and Table 2's, in METHODS order
PAPER_ROWS: dict[str, list[str]] = {
    m: [x for x in METHODS if x in TABLE1_ROWS[m] or x in TABLE2_ROWS.get(m, ())] for m in MODELS
}
