"""Publishing a built model folder whole: build into a temporary sibling, then rename it into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator


@contextlib.contextmanager
def building(out_dir: str, prefix: str) -> Iterator[str]:
    """Yield a temporary sibling folder of ``out_dir`` to build into (write the manifest last). On a
    clean exit it replaces ``out_dir``, so a half-written build is never found there; on an error it
    is removed and ``out_dir`` is left as it was."""
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
    os.chmod(tmp, 0o755)
    try:
        yield tmp
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
        tmp = None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
