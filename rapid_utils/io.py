"""Atomic file writing: results and metadata are either complete on disk or absent."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success make it durable and rename it over `path`.

    A crash, interruption or power cut leaves the old file (or no file), never a half-written
    one: the file is fsynced before the rename and its folder after it. The file gets the
    permissions of a plainly created one (0666 less the umask), so others can read results.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        tmp.chmod(0o666 & ~_UMASK)
        os.replace(tmp, target)
        _fsync_folder(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


def replace_keeping_previous(new: Path, target: Path, previous: Path) -> None:
    """Rename the durable file `new` over `target`, the old `target` becoming `previous`.

    At every moment one complete file exists among `target` and `previous`: a run killed
    between the two renames finds the previous version (`previous`) and no current one.
    """
    if target.exists():
        os.replace(target, previous)
    os.replace(new, target)
    _fsync_folder(target.parent)


def _read_umask() -> int:
    """The process umask (read once at import: setting it to read it is not thread-safe)."""
    current = os.umask(0o022)
    os.umask(current)
    return current


_UMASK = _read_umask()


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX; Windows cannot open folders, and needs not)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file's content.

    Remembered per file while its inode, size and modification time stay the same: the batch
    asks for one BYOL checkpoint's hash once per fine-tuning job, and a ResNet-50 checkpoint
    is hundreds of MB. Atomic writes replace the inode, so a rewritten file is hashed again.
    """
    status = os.stat(path)
    return _sha256_of(str(Path(path).resolve()), status.st_ino, status.st_size,
                      status.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _sha256_of(path: str, inode: int, size: int, mtime_ns: int) -> str:
    """`file_sha256`'s hash; the file's identity and state are the cache key."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Write JSON atomically (indent 2, keys in insertion order)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=str))
