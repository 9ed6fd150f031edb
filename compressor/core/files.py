"""Atomic file writes: every artifact is written to a temporary name beside its target, then renamed.

So a crash, a Ctrl-C or a failed check never leaves a half-written file under the final name.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path (same folder, same suffix) to write; it replaces ``path`` only on success."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
