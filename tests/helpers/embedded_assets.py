"""Build the embedded task's assets (data, tokenizer, warm-started model) into one ``gxpo_embedded.dir``.

``python -m helpers.embedded_assets DIR`` composes the recipe's default config with
``gxpo_embedded.dir=DIR`` and runs the recipe's own builder (``recipe.gxpo.embedded``), the same code
path as the first run of the main job. The suite's ``embedded_assets_dir`` fixture calls it once, under a
file lock, so that every end-to-end test (in any pytest-xdist worker) finds the assets built and reuses
them; run in a subprocess so that Hydra's global state in the test process is never touched.
"""

from __future__ import annotations

import sys

from hydra import compose, initialize_config_dir

from helpers.paths import REPO_ROOT
from recipe.gxpo.embedded import prepare_embedded_assets


def main(out_dir: str) -> None:
    with initialize_config_dir(config_dir=str(REPO_ROOT / "recipe" / "gxpo" / "config"), version_base=None):
        config = compose("gxpo_trainer", overrides=[f"gxpo_embedded.dir={out_dir}"])
    built = prepare_embedded_assets(config)
    print(f"embedded assets in {out_dir}: built {built or 'nothing (all reused)'}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
