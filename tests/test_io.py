"""Atomic writes (durable, readable by others, never half-written) and remembered file hashes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from rapid_utils import io


def test_atomic_write_is_readable_by_others_and_leaves_no_temporary(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        io.write_json_atomic(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o666 & ~io._UMASK
    assert (tmp_path / "r.json").stat().st_mode & 0o044  # group and others may read
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_atomic_write_fsyncs_the_file_and_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    io.write_json_atomic(tmp_path / "r.json", {"a": 1})
    assert any(Path(p).name.startswith(".r.json.") for p in synced)  # the file, before rename
    assert str(tmp_path.resolve()) in synced  # the folder, after it


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    io.write_json_atomic(tmp_path / "r.json", {"a": 1})
    with pytest.raises(RuntimeError), io.atomic_path(tmp_path / "r.json") as tmp:
        tmp.write_text('{"a": ')
        raise RuntimeError("killed mid-write")
    assert (tmp_path / "r.json").read_text() == '{\n  "a": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_replace_keeping_previous(tmp_path: Path) -> None:
    target, previous = tmp_path / "c.pt", tmp_path / "c.previous.pt"
    for version in ("1", "2"):
        new = tmp_path / "new"
        new.write_text(version)
        io.replace_keeping_previous(new, target, previous)
    assert target.read_text() == "2" and previous.read_text() == "1"


def test_file_sha256_is_remembered_until_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"first")
    first = io.file_sha256(path)
    assert first == hashlib.sha256(b"first").hexdigest()
    hits = io._sha256_of.cache_info().hits
    assert io.file_sha256(path) == first
    assert io._sha256_of.cache_info().hits == hits + 1  # not read again
    path.write_bytes(b"other")  # same inode and size, new content and modification time
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert io.file_sha256(path) == hashlib.sha256(b"other").hexdigest()
    io.write_json_atomic(path, {"retrained": True})  # a new inode
    assert io.file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
