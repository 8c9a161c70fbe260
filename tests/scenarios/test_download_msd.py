"""Offline tests for data_scripts/download_msd.py (local HTTP server, fake MSD tar)."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import re
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "data_scripts" / "download_msd.py"
TASK = "Task04_Hippocampus"


@pytest.fixture(scope="module")
def dl():
    spec = importlib.util.spec_from_file_location("download_msd", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------- #
# fake archive
# --------------------------------------------------------------------------- #
def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def make_msd_tar(task: str = TASK, extra: dict[str, bytes] | None = None) -> bytes:
    """A tiny MSD-like tar: dataset.json + 2 images + 2 labels (byte blobs)."""
    cases = ["hippocampus_001.nii.gz", "hippocampus_002.nii.gz"]
    meta = {
        "name": "Hippocampus",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "numTraining": len(cases),
        "training": [{"image": f"./imagesTr/{c}", "label": f"./labelsTr/{c}"} for c in cases],
        "test": [],
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add(tar, f"{task}/dataset.json", json.dumps(meta).encode())
        for i, c in enumerate(cases):
            # pad so the archive is a few hundred KiB -> several read chunks
            _add(tar, f"{task}/imagesTr/{c}", bytes([i]) * 50_000 + b"img")
            _add(tar, f"{task}/labelsTr/{c}", bytes([i + 1]) * 50_000 + b"lbl")
        for name, data in (extra or {}).items():
            _add(tar, name, data)
    return buf.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --------------------------------------------------------------------------- #
# local HTTP server with Range support
# --------------------------------------------------------------------------- #
class FakeServer:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.range_headers: list[str | None] = []
        self.ignore_range = False
        self.truncate_at: int | None = None  # send only this many body bytes, then close
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output quiet
                pass

            def do_GET(self):
                data = srv.files.get(self.path)
                rng = self.headers.get("Range")
                srv.range_headers.append(rng)
                if data is None:
                    self.send_error(404)
                    return
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if m and not srv.ignore_range:
                    start = int(m.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    body = data[start:]
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    body = data
                    self.send_response(200)
                self.send_header("Content-Type", "application/x-tar")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if srv.truncate_at is not None:
                    self.wfile.write(body[: srv.truncate_at])
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    def url(self, path: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{path}"


@pytest.fixture
def server():
    s = FakeServer()
    s.thread.start()
    try:
        yield s
    finally:
        s.httpd.shutdown()
        s.httpd.server_close()
        s.thread.join(timeout=5)


def run(dl, dest: Path, url: str, digest: str, *extra: str) -> int:
    return dl.main([TASK, "--dest", str(dest), "--url", url, "--md5", digest, "--quiet", *extra])


def assert_msd_layout(task_dir: Path, archive: bytes) -> None:
    assert (task_dir / "dataset.json").is_file()
    assert (task_dir / "imagesTr").is_dir() and (task_dir / "labelsTr").is_dir()
    meta = json.loads((task_dir / "dataset.json").read_text())
    for e in meta["training"]:
        assert (task_dir / e["image"]).is_file()
        assert (task_dir / e["label"]).is_file()
    # content identical to the archive's
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for m in tar.getmembers():
            if m.isfile():
                rel = Path(m.name).relative_to(TASK)
                assert (task_dir / rel).read_bytes() == tar.extractfile(m).read()


def leftovers(dest: Path) -> list[str]:
    """Anything in dest besides the task folder (temp dirs, .part, .tar)."""
    return sorted(p.name for p in dest.iterdir() if p.name != TASK)


# --------------------------------------------------------------------------- #
# tests
# --------------------------------------------------------------------------- #
def test_known_tasks_match_monai(dl):
    assert len(dl.TASKS) == 10
    for name, (url, digest) in dl.TASKS.items():
        assert url == f"https://msd-for-monai.s3-us-west-2.amazonaws.com/{name}.tar"
        assert re.fullmatch(r"[0-9a-f]{32}", digest)
    assert dl.TASKS["Task04_Hippocampus"][1] == "9d24dba78a72977dbd1d2e110310f31b"
    assert dl.TASKS["Task09_Spleen"][1] == "410d4a301da4e5b2f6f86ec3ddba524e"


def test_list(dl, capsys):
    assert dl.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in dl.TASKS)


def test_full_download(dl, server, tmp_path):
    data = make_msd_tar()
    server.files["/t.tar"] = data
    dest = tmp_path / "dest"
    assert run(dl, dest, server.url("/t.tar"), md5(data)) == 0
    assert_msd_layout(dest / TASK, data)
    assert server.range_headers == [None]
    assert leftovers(dest) == []  # archive removed, no temp dir


def test_keep_archive(dl, server, tmp_path):
    data = make_msd_tar()
    server.files["/t.tar"] = data
    dest = tmp_path / "dest"
    assert run(dl, dest, server.url("/t.tar"), md5(data), "--keep-archive") == 0
    assert (dest / f"{TASK}.tar").read_bytes() == data
    assert leftovers(dest) == [f"{TASK}.tar"]


def test_progress_to_stderr(dl, server, tmp_path, capsys):
    data = make_msd_tar()
    server.files["/t.tar"] = data
    dest = tmp_path / "dest"
    assert dl.main([TASK, "--dest", str(dest), "--url", server.url("/t.tar"), "--md5", md5(data)]) == 0
    err = capsys.readouterr().err
    assert "100.0%" in err


def test_resume_with_range(dl, server, tmp_path):
    data = make_msd_tar()
    server.files["/t.tar"] = data
    dest = tmp_path / "dest"
    dest.mkdir()
    half = len(data) // 2
    (dest / f"{TASK}.tar.part").write_bytes(data[:half])
    assert run(dl, dest, server.url("/t.tar"), md5(data)) == 0
    assert server.range_headers == [f"bytes={half}-"]
    assert_msd_layout(dest / TASK, data)
    assert leftovers(dest) == []


def test_resume_server_ignores_range_restarts(dl, server, tmp_path):
    data = make_msd_tar()
    server.files["/t.tar"] = data
    server.ignore_range = True
    dest = tmp_path / "dest"
    dest.mkdir()
    # garbage in the .part: if it were appended to, the MD5 would fail
    (dest / f"{TASK}.tar.part").write_bytes(b"x" * 1000)
    assert run(dl, dest, server.url("/t.tar"), md5(data)) == 0
    assert server.range_headers == ["bytes=1000-"]
    assert_msd_layout(dest / TASK, data)


def test_resume_part_already_complete(dl, server, tmp_path):
    data = make_msd_tar()
    server.files["/t.tar"] = data
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / f"{TASK}.tar.part").write_bytes(data)
    assert run(dl, dest, server.url("/t.tar"), md5(data)) == 0  # server answers 416
    assert_msd_layout(dest / TASK, data)


def test_wrong_md5(dl, server, tmp_path, capsys):
    data = make_msd_tar()
    server.files["/t.tar"] = data
    dest = tmp_path / "dest"
    wrong = "0" * 32
    assert run(dl, dest, server.url("/t.tar"), wrong) == 1
    err = capsys.readouterr().err
    assert wrong in err and md5(data) in err and f"{TASK}.tar" in err
    assert not (dest / TASK).exists()
    assert leftovers(dest) == []  # archive (and .part) removed


def test_unknown_task(dl, capsys):
    assert dl.main(["Task99_Nope", "--dest", "/nonexistent/never-created"]) == 2
    err = capsys.readouterr().err
    assert "Task99_Nope" in err and "Task04_Hippocampus" in err and "Task10_Colon" in err
    assert not Path("/nonexistent/never-created").exists()


def test_bad_md5_argument(dl, tmp_path):
    assert dl.main([TASK, "--dest", str(tmp_path), "--md5", "xyz"]) == 2


def test_network_error_keeps_part(dl, server, tmp_path, capsys):
    dest = tmp_path / "dest"
    dest.mkdir()
    part = dest / f"{TASK}.tar.part"
    part.write_bytes(b"partial")
    # 404 from the server
    assert run(dl, dest, server.url("/missing.tar"), "0" * 32) == 1
    assert "404" in capsys.readouterr().err
    assert part.read_bytes() == b"partial"
    # connection refused: port of a closed server
    s = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = s.server_address[1]
    s.server_close()
    assert run(dl, dest, f"http://127.0.0.1:{port}/t.tar", "0" * 32) == 1
    assert "network error" in capsys.readouterr().err
    assert part.read_bytes() == b"partial"
    assert not (dest / TASK).exists()


def test_interrupted_transfer_then_resume(dl, server, tmp_path, capsys):
    data = make_msd_tar()
    server.files["/t.tar"] = data
    dest = tmp_path / "dest"
    server.truncate_at = 70_000  # connection drops mid-transfer
    assert run(dl, dest, server.url("/t.tar"), md5(data)) == 1
    assert "partial file kept" in capsys.readouterr().err
    part = dest / f"{TASK}.tar.part"
    assert part.is_file() and 0 < part.stat().st_size < len(data)
    assert not (dest / f"{TASK}.tar").exists() and not (dest / TASK).exists()
    size = part.stat().st_size
    server.truncate_at = None
    assert run(dl, dest, server.url("/t.tar"), md5(data)) == 0
    assert server.range_headers[-1] == f"bytes={size}-"
    assert_msd_layout(dest / TASK, data)


@pytest.mark.parametrize("evil_name", ["../evil", "../../evil", f"{TASK}/../../evil", "/tmp/evil_abs_msd_test"])
def test_path_traversal_refused(dl, server, tmp_path, evil_name, capsys):
    data = make_msd_tar(extra={evil_name: b"pwned"})
    server.files["/t.tar"] = data
    dest = tmp_path / "a" / "dest"
    assert run(dl, dest, server.url("/t.tar"), md5(data)) == 1
    assert "unsafe" in capsys.readouterr().err
    assert not (dest / TASK).exists()
    assert not any(p.name.startswith("evil") for p in tmp_path.rglob("*"))
    assert not Path("/tmp/evil_abs_msd_test").exists()
    # no temporary unpack folder left behind
    assert [p.name for p in dest.iterdir() if p.is_dir()] == []


def test_symlink_outside_refused(dl, server, tmp_path):
    # rebuild the fake archive with an extra symlink member pointing outside
    src = tarfile.open(fileobj=io.BytesIO(make_msd_tar()))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for m in src.getmembers():
            tar.addfile(m, src.extractfile(m))
        link = tarfile.TarInfo(f"{TASK}/imagesTr/link")
        link.type = tarfile.SYMTYPE
        link.linkname = "../../../outside"
        tar.addfile(link)
    data = out.getvalue()
    server.files["/t.tar"] = data
    dest = tmp_path / "dest"
    assert run(dl, dest, server.url("/t.tar"), md5(data)) == 1
    assert not (dest / TASK).exists()


def test_invalid_layout_refused(dl, server, tmp_path, capsys):
    # dataset.json lists a file that is not in the archive
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        meta = {"training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}]}
        _add(tar, f"{TASK}/dataset.json", json.dumps(meta).encode())
        _add(tar, f"{TASK}/imagesTr/a.nii.gz", b"img")
        d = tarfile.TarInfo(f"{TASK}/labelsTr")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
    data = buf.getvalue()
    server.files["/t.tar"] = data
    dest = tmp_path / "dest"
    assert run(dl, dest, server.url("/t.tar"), md5(data)) == 1
    assert "labelsTr/a.nii.gz" in capsys.readouterr().err
    assert not (dest / TASK).exists()
    assert [p.name for p in dest.iterdir() if p.is_dir()] == []


def test_second_run_is_noop(dl, server, tmp_path, capsys):
    data = make_msd_tar()
    server.files["/t.tar"] = data
    dest = tmp_path / "dest"
    assert run(dl, dest, server.url("/t.tar"), md5(data)) == 0
    marker = dest / TASK / "imagesTr" / "hippocampus_001.nii.gz"
    mtime = marker.stat().st_mtime_ns
    capsys.readouterr()
    n_requests = len(server.range_headers)
    assert run(dl, dest, server.url("/t.tar"), md5(data)) == 0
    assert len(server.range_headers) == n_requests  # no network access
    assert "nothing to do" in capsys.readouterr().err
    assert marker.stat().st_mtime_ns == mtime
    assert_msd_layout(dest / TASK, data)


def test_existing_invalid_task_folder_is_an_error(dl, server, tmp_path):
    data = make_msd_tar()
    server.files["/t.tar"] = data
    dest = tmp_path / "dest"
    (dest / TASK).mkdir(parents=True)
    assert run(dl, dest, server.url("/t.tar"), md5(data)) == 1
    assert server.range_headers == []


def test_check_msd_layout_reports_problems(dl, tmp_path):
    assert dl.check_msd_layout(tmp_path / "missing")
    (tmp_path / "dataset.json").write_text("{not json")
    assert any("cannot read" in p for p in dl.check_msd_layout(tmp_path))
