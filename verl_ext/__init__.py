"""GXPO for verl: update-rule core, verl adapters (workers, platform and rollout plugins), rewards and data.

Importing the package hides CUDA builds of torchvision / torchaudio / torchcodec that sit next to a CPU
torch (they fail to import, and transformers imports torchvision whenever it is installed):
:mod:`verl_ext.torch_companions`.
"""

from verl_ext.torch_companions import hide_broken_torch_companions as _hide_broken_torch_companions

_hide_broken_torch_companions()
