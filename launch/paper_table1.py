"""The paper's Table 1 grid: ``python -m launch.sweep --preset table1`` under a name of its own.

    python -m launch.paper_table1 [--models qwen2.5-1.5b,llama3.2-3b] [--methods grpo,gxpo_k5]
                                  [--paper-rows] [--seeds 1,2,3] [--dry-run] [--wait] -- overrides ...

4 models (Qwen2.5-1.5B/3B/7B, Llama3.2-3B) x 7 methods (GRPO; SFPO K=3/5/10; GXPO K=3/5/10) = 28
runs; ``--paper-rows`` keeps only the 26 the paper reports (Table 1's 24 and Table 2's Llama3.2-3B
K=10 runs; no K=10 for 7B). All other flags are those of ``launch.sweep`` / ``launch.submit``; jobs
beyond the cluster's GPUs wait for them (see ``launch.sweep``).
"""

from __future__ import annotations

import sys

from launch import sweep


def main(argv=None, client=None) -> int:
    return sweep.main(argv, client=client, default_preset="table1", prog="python -m launch.paper_table1")


if __name__ == "__main__":
    sys.exit(main())
