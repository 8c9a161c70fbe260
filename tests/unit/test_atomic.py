"""medseg.atomic: what it writes is readable as a plain open() / mkdir would make it, and a
folder swapped into place is never missing."""
import os
import stat

import pytest

from medseg import atomic
from medseg.atomic import DIR_MODE, FILE_MODE, atomic_write_text, make_temporary_dir, replace_dir, write_csv


@pytest.fixture
def group_umask():
    """umask 007 (a group-shared project folder), restored afterwards."""
    old = os.umask(0o007)
    yield 0o007
    os.umask(old)


def test_atomic_files_get_the_mode_open_would_give(tmp_path, group_umask):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open() makes under this umask
    for path in (atomic_write_text(tmp_path / "a.txt", "x"), write_csv([{"a": 1}], tmp_path / "b.csv")):
        assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == FILE_MODE & ~group_umask
    assert atomic.umask() == group_umask
    folder = make_temporary_dir(tmp_path / "model")
    (tmp_path / "mkdir").mkdir()
    assert stat.S_IMODE(folder.stat().st_mode) == stat.S_IMODE((tmp_path / "mkdir").stat().st_mode) == DIR_MODE & ~0o007


def test_a_replaced_folder_is_never_missing(tmp_path, monkeypatch):
    """Every rename and removal replace_dir does happens while ``path`` holds a complete folder."""
    path = tmp_path / "model"
    path.mkdir()
    (path / "meta.json").write_text("old")
    new = tmp_path / ".model.new"
    new.mkdir()
    (new / "meta.json").write_text("new")
    seen = []

    def watched(real):
        def call(*args, **kwargs):
            seen.append((path / "meta.json").is_file())
            return real(*args, **kwargs)
        return call
    monkeypatch.setattr(atomic.os, "rename", watched(os.rename))
    monkeypatch.setattr(atomic.shutil, "rmtree", watched(atomic.shutil.rmtree))
    replace_dir(new, path)
    assert (path / "meta.json").read_text() == "new" and not new.exists()
    assert seen and all(seen), "a moment with no model folder"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no leftover old or temporary folder
