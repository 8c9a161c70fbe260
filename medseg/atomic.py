"""Atomic file writes: a reader (or a crash) sees the old file or the complete new one, never a
partial one."""
from __future__ import annotations

import contextlib
import csv
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success fsync it and rename it over
    ``path`` (atomic on POSIX), then fsync the folder. On error the temporary file is removed and
    ``path`` is untouched.

    Args:
        suffix: the temporary file's ending (``".nii.gz"`` lets nibabel/SimpleITK pick the format).

    Raises:
        IsADirectoryError: ``path`` is an existing folder (nothing is written, the folder is kept).
        OSError: the parent folder cannot be created or written.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder: give a file name to write", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_csv(rows: list[dict], path: str | Path) -> Path:
    """Write dict rows as CSV atomically; the header is every key in order of first appearance
    (a row without a key gets an empty cell)."""
    fields = list(dict.fromkeys(k for r in rows for k in r)) or ["case_id"]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return Path(path)
