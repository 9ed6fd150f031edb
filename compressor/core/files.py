"""Atomic file writes: every artifact is written to a temporary name beside its target, then renamed.

So a crash, a Ctrl-C, a full disk or a failed check never leaves a half-written file under the final name. A
full disk is an environment problem, not a bug: it surfaces as a one-line :class:`CompressorError` naming the
file being written.
"""

from __future__ import annotations

import errno
import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from compressor.errors import CompressorError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def no_space_error(path: str | Path) -> CompressorError:
    return CompressorError(f"no space left on device writing {path}; free space or choose another --out")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path (same folder, same suffix) to write; it replaces ``path`` only on success."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(suffix=".tmp" + path.suffix, dir=path.parent)
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise no_space_error(path) from None
        raise
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise no_space_error(path) from None
        raise
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write text or bytes to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def copy_atomic(src: str | Path, dst: str | Path) -> Path:
    """Copy ``src`` to ``dst`` atomically: a full disk leaves ``dst`` as it was, never truncated."""
    with atomic_path(dst) as tmp, open(src, "rb") as fin, open(tmp, "wb") as fout:
        while chunk := fin.read(1 << 20):
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return Path(dst)


def path_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot name a file or folder on this machine: empty, a name or the whole path longer than the
    file system allows, or below a file; None when it can. Checked before any work, so a bad ``--out`` fails at
    once rather than after the passes, and without an OS error ("File name too long") in the middle of a run."""
    text = os.fspath(path)
    if not text.strip():
        return "is empty"
    try:
        name_max, path_max = os.pathconf(".", "PC_NAME_MAX"), os.pathconf(".", "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        name_max, path_max = 255, 4096
    long_name = next((part for part in Path(text).parts if len(os.fsencode(part)) > name_max), None)
    if long_name is not None:
        return f"has a name of {len(os.fsencode(long_name))} bytes; the file system allows {name_max}"
    if len(os.fsencode(os.path.abspath(text))) >= path_max:
        return f"is {len(os.fsencode(os.path.abspath(text)))} bytes long; the file system allows {path_max - 1}"
    for parent in reversed(Path(text).parents):
        if parent.exists() and not parent.is_dir():
            return f"is below {parent}, which is a file"
    return None


def torch_save_atomic(obj: object, path: str | Path) -> Path:
    """``torch.save`` atomically. Serialised in memory first: torch names the archive's root folder after the
    file it writes (a random temporary name here, so two saves of one object would differ in bytes), and its
    zip writer reports a full disk as a bare RuntimeError rather than an OSError."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_atomic(path, buf.getvalue())


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:  # noqa: ANN001 - a matplotlib Figure
    """Write a matplotlib figure as PNG atomically and close it (figures are kept open by pyplot otherwise)."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return Path(path)
