"""deploy: make a distilled student small and fast to ship — vocabulary trimming (trim.py),
ONNX export and int8 quantisation (onnx_export.py). Reads any HF encoder directory and
data_prep shards; never imports trainer/."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_dir(out: Path):
    """A fresh directory beside `out` that replaces `out` when the block succeeds and is
    removed when it fails: no half-written output, ever."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
