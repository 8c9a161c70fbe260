"""Atomic file writes: a reader (or a crash) sees the old file or the complete new one, never a
partial one. What is written gets the modes a plain ``open()`` / ``mkdir`` would give it
(``0o666 & ~umask`` for files, ``0o777 & ~umask`` for folders), so colleagues in the group can
read predictions, reports and checkpoints on shared storage (``tempfile`` alone makes them 0600
and 0700)."""
from __future__ import annotations

import contextlib
import csv
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


FILE_MODE = 0o666  # before the umask, as open() creates a file
DIR_MODE = 0o777  # before the umask, as mkdir creates a folder


def umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``/proc/self/status``),
    else by setting and restoring it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_temporary_dir(path: Path) -> Path:
    """A new hidden folder beside ``path`` (to build a folder in before renaming it into place),
    with the modes ``mkdir`` would give it."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(tmp, DIR_MODE & ~umask())
    return tmp


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``, glibc 2.28+); False where
    the system cannot."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # an old kernel, or a filesystem without it
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(new: Path, path: Path) -> None:
    """Put the complete folder ``new`` at ``path``, replacing the folder there, so that a reader
    always finds either the old folder or the new one at ``path``, never none: an atomic exchange
    where the system has one (Linux); elsewhere two renames, with a moment between them in which
    ``path`` is missing. ``new`` is gone afterwards.

    Raises:
        OSError: a rename fails (``path`` is left as it was, ``new`` in place).
    """
    new, path = Path(new), Path(path)
    if not path.exists():
        os.rename(new, path)
    elif _exchange(new, path):
        shutil.rmtree(new, ignore_errors=True)  # it now holds the old folder
    else:
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(path, old)
        os.rename(new, path)
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename in it) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success fsync it and rename it over
    ``path`` (atomic on POSIX), then fsync the folder. The file gets ``FILE_MODE & ~umask``. On error
    the temporary file is removed and ``path`` is untouched.

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
        os.chmod(tmp, FILE_MODE & ~umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


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
