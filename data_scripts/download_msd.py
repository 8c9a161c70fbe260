#!/usr/bin/env python3
"""Download, verify and unpack a Medical Segmentation Decathlon (MSD) task.

Standard library only. The URLs and MD5 checksums are the ones used by
MONAI's ``monai.apps.DecathlonDataset`` (``DecathlonDataset.resource`` and
``DecathlonDataset.md5`` in ``monai/apps/datasets.py``, MONAI 1.6.1).

Example::

    python data_scripts/download_msd.py Task04_Hippocampus --dest data/msd
    python data_scripts/download_msd.py --list

Steps:

1. Download ``<url>`` to ``DEST/<Task>.tar.part``; if the ``.part`` file
   already exists the download resumes with an HTTP ``Range`` request (a
   server that answers ``200`` instead of ``206`` makes it restart from zero).
   The file is renamed to ``DEST/<Task>.tar`` only once it is complete.
2. Verify the archive's MD5; on mismatch the archive is deleted.
3. Unpack safely (absolute paths, ``..`` members, links pointing outside and
   device files are refused) into a temporary folder inside ``DEST``, check
   the MSD layout, then rename it to ``DEST/<Task>``.

If ``DEST/<Task>/dataset.json`` already exists and the layout is valid,
nothing is done.

Exit codes: 0 success (or nothing to do), 1 download / checksum / unpack
error, 2 usage error (e.g. an unknown task name).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import posixpath
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Optional, Sequence

_BASE_URL = "https://msd-for-monai.s3-us-west-2.amazonaws.com"

#: task name -> (URL, MD5 hex digest). Source: monai.apps.DecathlonDataset.
TASKS: dict[str, tuple[str, str]] = {
    "Task01_BrainTumour": (f"{_BASE_URL}/Task01_BrainTumour.tar", "240a19d752f0d9e9101544901065d872"),
    "Task02_Heart": (f"{_BASE_URL}/Task02_Heart.tar", "06ee59366e1e5124267b774dbd654057"),
    "Task03_Liver": (f"{_BASE_URL}/Task03_Liver.tar", "a90ec6c4aa7f6a3d087205e23d4e6397"),
    "Task04_Hippocampus": (f"{_BASE_URL}/Task04_Hippocampus.tar", "9d24dba78a72977dbd1d2e110310f31b"),
    "Task05_Prostate": (f"{_BASE_URL}/Task05_Prostate.tar", "35138f08b1efaef89d7424d2bcc928db"),
    "Task06_Lung": (f"{_BASE_URL}/Task06_Lung.tar", "8afd997733c7fc0432f71255ba4e52dc"),
    "Task07_Pancreas": (f"{_BASE_URL}/Task07_Pancreas.tar", "4f7080cfca169fa8066d17ce6eb061e4"),
    "Task08_HepaticVessel": (f"{_BASE_URL}/Task08_HepaticVessel.tar", "641d79e80ec66453921d997fbf12a29c"),
    "Task09_Spleen": (f"{_BASE_URL}/Task09_Spleen.tar", "410d4a301da4e5b2f6f86ec3ddba524e"),
    "Task10_Colon": (f"{_BASE_URL}/Task10_Colon.tar", "bad7a188931dc2f6acf72b08eb6202d0"),
}

CHUNK_SIZE = 1 << 20  # bytes read per iteration (1 MiB)
TIMEOUT_S = 60.0  # socket timeout in seconds for each network operation


class MSDError(Exception):
    """Base class for the errors this script reports (exit code 1)."""


class DownloadError(MSDError):
    """A network / HTTP error; the partial ``.part`` file is kept for resuming."""


class ChecksumError(MSDError):
    """The archive's MD5 does not match the expected one (archive deleted)."""


class UnsafeArchiveError(MSDError):
    """The tar archive contains a member that could write outside the target."""


class LayoutError(MSDError):
    """The unpacked data is not a valid MSD task layout."""


# --------------------------------------------------------------------------- #
# Progress
# --------------------------------------------------------------------------- #
class _Progress:
    """Prints ``label: NN.N% (x / y MiB)`` to stderr, throttled.

    On a terminal the line is rewritten in place (``\\r``); otherwise a new
    line is printed every 10 %. With an unknown total only MiB are shown.
    """

    def __init__(self, label: str, total: Optional[int], done: int = 0) -> None:
        self.label = label
        self.total = total if total and total > 0 else None
        self.done = done
        self.tty = sys.stderr.isatty()
        self._last_t = 0.0
        self._last_step = -1

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.tty:
            if now - self._last_t >= 0.2:
                self._last_t = now
                sys.stderr.write("\r" + self._line())
                sys.stderr.flush()
        elif self.total:
            step = int(10 * self.done / self.total)
            if step != self._last_step and step < 10:
                self._last_step = step
                sys.stderr.write(self._line() + "\n")
                sys.stderr.flush()

    def finish(self) -> None:
        sys.stderr.write(("\r" if self.tty else "") + self._line() + "\n")
        sys.stderr.flush()

    def _line(self) -> str:
        mib = self.done / 2**20
        if self.total:
            pct = 100.0 * self.done / self.total
            return f"{self.label}: {pct:5.1f}% ({mib:.1f} / {self.total / 2**20:.1f} MiB)"
        return f"{self.label}: {mib:.1f} MiB"


# --------------------------------------------------------------------------- #
# Download
# --------------------------------------------------------------------------- #
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_CONTENT_RANGE_UNSAT = re.compile(r"bytes\s+\*/(\d+)")


def download(url: str, target: Path, *, progress: bool = True, timeout: float = TIMEOUT_S) -> Path:
    """Download ``url`` to ``target``, resuming from ``target + '.part'``.

    The bytes go to ``<target>.part``; when it already exists its size ``N``
    (in bytes) is used for a ``Range: bytes=N-`` request. A ``206`` answer is
    appended; a ``200`` answer (server ignores ranges) or an inconsistent
    ``Content-Range`` restarts from zero; a ``416`` whose total equals ``N``
    means the ``.part`` is already complete. Only a complete download is
    renamed to ``target``.

    Args:
        url: HTTP(S) (or any urllib-supported) URL.
        target: final path of the downloaded file.
        progress: print a percentage line to stderr.
        timeout: socket timeout in seconds.

    Returns:
        ``target``.

    Raises:
        DownloadError: on network / HTTP errors or a truncated transfer; the
            ``.part`` file is kept so that a later call resumes.
    """
    target = Path(target)
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)

    for _attempt in range(2):  # 2nd attempt only after discarding a bad .part
        offset = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={"User-Agent": "medseg-download-msd/1.0"})
        if offset > 0:
            req.add_header("Range", f"bytes={offset}-")
        try:
            resp = urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as e:
            if e.code == 416 and offset > 0:
                m = _CONTENT_RANGE_UNSAT.match(e.headers.get("Content-Range", "") or "")
                e.close()
                if m and int(m.group(1)) == offset:
                    os.replace(part, target)  # .part already holds the whole file
                    return target
                print(f"Server refused to resume at byte {offset}; restarting from zero.", file=sys.stderr)
                part.unlink()
                continue
            raise DownloadError(f"HTTP error {e.code} ({e.reason}) downloading {url}"
                                + (f"; partial file kept at {part} (run again to resume)" if part.exists() else "")) from e
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            raise DownloadError(f"network error downloading {url}: {e}"
                                + (f"; partial file kept at {part} (run again to resume)" if part.exists() else "")) from e

        with resp:
            status = getattr(resp, "status", None) or resp.getcode()
            length_hdr = resp.headers.get("Content-Length")
            length = int(length_hdr) if length_hdr and length_hdr.isdigit() else None
            if offset > 0 and status == 206:
                m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", "") or "")
                if m and int(m.group(1)) != offset:
                    print(f"Server resumed at byte {m.group(1)} instead of {offset}; restarting from zero.",
                          file=sys.stderr)
                    part.unlink()
                    continue
                mode, start = "ab", offset
                total = int(m.group(3)) if m and m.group(3) != "*" else (offset + length if length is not None else None)
                print(f"Resuming {target.name} at byte {offset}.", file=sys.stderr)
            else:
                if offset > 0:
                    print(f"Server does not support resuming (HTTP {status}); restarting {target.name} from zero.",
                          file=sys.stderr)
                mode, start = "wb", 0
                total = length
            bar = _Progress(target.name, total, start) if progress else None
            received = 0
            try:
                with open(part, mode) as fh:
                    while True:
                        chunk = resp.read(CHUNK_SIZE)
                        if not chunk:
                            break
                        fh.write(chunk)
                        received += len(chunk)
                        if bar:
                            bar.update(len(chunk))
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                if bar:
                    sys.stderr.write("\n")
                raise DownloadError(f"network error while downloading {url}: {e}; "
                                    f"partial file kept at {part} (run again to resume)") from e
            if bar:
                bar.finish()
            if length is not None and received != length:
                raise DownloadError(f"download of {url} ended early ({received} of {length} bytes); "
                                    f"partial file kept at {part} (run again to resume)")
        os.replace(part, target)
        return target

    raise DownloadError(f"could not download {url}: the server keeps rejecting the resume request; "
                        f"delete {part} and try again")


def md5sum(path: Path, chunk_size: int = CHUNK_SIZE) -> str:
    """Return the MD5 hex digest of the file at ``path`` (read in ``chunk_size``-byte chunks).

    Raises:
        OSError: if the file cannot be read.
    """
    try:
        h = hashlib.md5(usedforsecurity=False)
    except TypeError:  # pragma: no cover - Python < 3.9
        h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_md5(path: Path, expected: str) -> None:
    """Check that ``path`` has MD5 ``expected`` (hex, case-insensitive).

    On mismatch the file is deleted.

    Raises:
        ChecksumError: naming the file, the expected and the actual checksum.
    """
    actual = md5sum(path)
    if actual.lower() != expected.strip().lower():
        path.unlink(missing_ok=True)
        raise ChecksumError(f"MD5 mismatch for {path}: expected {expected.lower()}, got {actual}; "
                            f"the archive was deleted, run again to re-download")


# --------------------------------------------------------------------------- #
# Unpack + layout check
# --------------------------------------------------------------------------- #
def _is_unsafe_name(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return p.is_absolute() or ".." in p.parts or re.match(r"^[A-Za-z]:", name) is not None


def check_tar_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Return the members of ``tar`` after checking that all of them are safe.

    Refused: absolute names, names with a ``..`` component, symbolic links
    whose target is absolute or resolves outside the archive root, hard links
    whose target is absolute or contains ``..``, and device / FIFO members.

    Raises:
        UnsafeArchiveError: naming the first offending member.
    """
    members = tar.getmembers()
    for m in members:
        if _is_unsafe_name(m.name):
            raise UnsafeArchiveError(f"refusing unsafe path in archive: {m.name!r}")
        if m.issym():
            # a symlink target is relative to the link's own directory
            target = posixpath.normpath(posixpath.join(posixpath.dirname(m.name), m.linkname))
            link_unsafe = PurePosixPath(m.linkname).is_absolute() or target == ".." or target.startswith("../")
        else:
            link_unsafe = m.islnk() and _is_unsafe_name(m.linkname)
        if link_unsafe:
            raise UnsafeArchiveError(f"refusing link {m.name!r} -> {m.linkname!r} pointing outside the archive")
        if m.isdev():
            raise UnsafeArchiveError(f"refusing device/FIFO member in archive: {m.name!r}")
    return members


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract the tar ``archive`` into the existing directory ``dest``.

    All members are checked first (see :func:`check_tar_members`) so nothing
    is written if any member is unsafe; extraction then uses
    ``filter="data"`` when the running Python supports it.

    Raises:
        UnsafeArchiveError: unsafe member (nothing extracted).
        LayoutError: the file is not a readable tar archive.
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = check_tar_members(tar)
            if hasattr(tarfile, "data_filter"):
                try:
                    tar.extractall(dest, members=members, filter="data")
                except tarfile.FilterError as e:
                    raise UnsafeArchiveError(f"refusing unsafe archive member: {e}") from e
            else:  # pragma: no cover - very old Python without extraction filters
                tar.extractall(dest, members=members)
    except tarfile.TarError as e:
        raise LayoutError(f"{archive} is not a valid tar archive: {e}") from e


def check_msd_layout(task_dir: Path) -> list[str]:
    """Check that ``task_dir`` is an MSD task folder.

    Requires ``dataset.json`` (a JSON object with a ``training`` list),
    ``imagesTr/`` and ``labelsTr/`` directories, and that every ``image`` and
    ``label`` path of every ``training`` entry exists inside ``task_dir``.

    Returns:
        A list of human-readable problems; empty when the layout is valid.
        Never raises for a missing / malformed folder.
    """
    task_dir = Path(task_dir)
    problems: list[str] = []
    ds = task_dir / "dataset.json"
    if not ds.is_file():
        return [f"missing {ds}"]
    try:
        meta = json.loads(ds.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return [f"cannot read {ds}: {e}"]
    for sub in ("imagesTr", "labelsTr"):
        if not (task_dir / sub).is_dir():
            problems.append(f"missing directory {task_dir / sub}")
    training = meta.get("training") if isinstance(meta, dict) else None
    if not isinstance(training, list):
        problems.append(f"{ds} has no 'training' list")
        return problems
    root = task_dir.resolve()
    missing = []
    for i, entry in enumerate(training):
        if not isinstance(entry, dict):
            problems.append(f"{ds}: training[{i}] is not an object")
            continue
        for key in ("image", "label"):
            rel = entry.get(key)
            if not isinstance(rel, str):
                problems.append(f"{ds}: training[{i}] has no '{key}'")
                continue
            p = (task_dir / rel).resolve()
            if root not in p.parents or not p.is_file():
                missing.append(rel)
    if missing:
        shown = ", ".join(missing[:5]) + (f" ... ({len(missing)} in all)" if len(missing) > 5 else "")
        problems.append(f"files listed in {ds} 'training' are missing: {shown}")
    return problems


def unpack(archive: Path, dest: Path, task: str) -> Path:
    """Unpack the MSD ``archive`` into ``dest / task``.

    The archive is extracted into a temporary folder inside ``dest``; its task
    root (``<tmp>/<task>``, or ``<tmp>`` itself if ``dataset.json`` is at the
    top level) is checked with :func:`check_msd_layout` and then renamed to
    ``dest / task``. The temporary folder is always removed.

    Returns:
        ``dest / task``.

    Raises:
        UnsafeArchiveError: the archive holds unsafe members.
        LayoutError: not a tar file, not an MSD layout, or ``dest / task``
            already exists.
    """
    dest = Path(dest)
    final = dest / task
    if final.exists():
        raise LayoutError(f"{final} already exists; remove it first")
    tmp = Path(tempfile.mkdtemp(prefix=f".{task}.unpack-", dir=dest))
    try:
        safe_extract(archive, tmp)
        root = tmp / task
        if not root.is_dir() and (tmp / "dataset.json").is_file():
            root = tmp
        problems = check_msd_layout(root)
        if problems:
            raise LayoutError(f"{archive} does not contain a valid MSD task {task!r}:\n  - "
                              + "\n  - ".join(p.replace(str(tmp), "<archive>") for p in problems))
        if root == tmp:
            os.replace(tmp, final)
            tmp = None  # type: ignore[assignment]
        else:
            os.replace(root, final)
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# --------------------------------------------------------------------------- #
# Orchestration / CLI
# --------------------------------------------------------------------------- #
def fetch_task(task: str, dest: Path, *, url: Optional[str] = None, md5: Optional[str] = None,
               keep_archive: bool = False, progress: bool = True) -> Path:
    """Download, verify and unpack MSD ``task`` into ``dest / task``.

    Does nothing if ``dest / task / dataset.json`` exists and the layout is
    valid. An already-complete ``dest / <task>.tar`` is reused (after MD5
    verification) instead of being downloaded again.

    Args:
        task: one of :data:`TASKS`.
        dest: destination folder (created if needed).
        url: override the download URL (e.g. a mirror or a test server).
        md5: override the expected MD5 hex digest.
        keep_archive: keep ``dest / <task>.tar`` after unpacking.
        progress: print download progress to stderr.

    Returns:
        The task folder ``dest / task``.

    Raises:
        KeyError: unknown task name.
        DownloadError, ChecksumError, UnsafeArchiveError, LayoutError: see
            :func:`download`, :func:`verify_md5`, :func:`unpack`.
    """
    if task not in TASKS:
        raise KeyError(task)
    default_url, default_md5 = TASKS[task]
    url = url or default_url
    md5 = md5 or default_md5
    dest = Path(dest)
    final = dest / task

    if final.exists():
        problems = check_msd_layout(final)
        if not problems:
            print(f"{task} already present and valid at {final}; nothing to do.", file=sys.stderr)
            return final
        raise LayoutError(f"{final} exists but is not a valid MSD task:\n  - " + "\n  - ".join(problems)
                          + f"\nremove {final} and run again")

    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / f"{task}.tar"
    if archive.is_file():
        print(f"Reusing existing archive {archive}.", file=sys.stderr)
    else:
        print(f"Downloading {url} -> {archive}", file=sys.stderr)
        download(url, archive, progress=progress)
    print(f"Verifying MD5 of {archive} ...", file=sys.stderr)
    verify_md5(archive, md5)
    print(f"Unpacking {archive} ...", file=sys.stderr)
    unpack(archive, dest, task)
    if not keep_archive:
        archive.unlink(missing_ok=True)
    print(f"{task} ready at {final}", file=sys.stderr)
    return final


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="download_msd.py",
        description="Download, verify (MD5) and unpack a Medical Segmentation Decathlon task.",
    )
    p.add_argument("task", nargs="?", help="task name, e.g. Task04_Hippocampus (see --list)")
    p.add_argument("--dest", type=Path, default=Path("data"),
                   help="destination folder; the task goes to DEST/<task> (default: ./data)")
    p.add_argument("--url", help="override the download URL")
    p.add_argument("--md5", help="override the expected MD5 hex digest")
    p.add_argument("--keep-archive", action="store_true", help="keep DEST/<task>.tar after unpacking")
    p.add_argument("--list", action="store_true", help="print the known task names and exit")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        Exit code: 0 success / nothing to do, 1 download, checksum or unpack
        error, 2 usage error (unknown or missing task name).
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse usage errors / --help
        return int(e.code) if isinstance(e.code, int) else 2

    if args.list:
        for name, (url, md5) in TASKS.items():
            print(f"{name}\t{url}\tmd5={md5}")
        return 0
    if not args.task:
        print("error: a task name is required (see --list)", file=sys.stderr)
        return 2
    if args.task not in TASKS:
        print(f"error: unknown task {args.task!r}; valid names are: {', '.join(TASKS)}", file=sys.stderr)
        return 2
    if args.md5 is not None and not re.fullmatch(r"[0-9a-fA-F]{32}", args.md5):
        print(f"error: --md5 must be 32 hex digits, got {args.md5!r}", file=sys.stderr)
        return 2

    try:
        fetch_task(args.task, args.dest, url=args.url, md5=args.md5,
                   keep_archive=args.keep_archive, progress=not args.quiet)
    except MSDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; a partial download is kept and will be resumed on the next run", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
