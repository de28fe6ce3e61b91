"""Atomic writes: a file or directory appears complete under its final name, or not at all."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from latentfm.errors import LatentFMError


def _default_mode(base: int) -> int:
    """``base`` (0o666 for files, 0o777 for directories) less the process umask, as ``open`` would give."""
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is synced and renamed to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, _default_mode(0o666))  # mkstemp creates 0600; outputs should be readable like any file
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` by a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, _default_mode(0o777))
    try:
        yield tmp
        old = _move_aside(path) if path.exists() else None
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_aside(path: Path) -> Path:
    """Rename a directory to a hidden temporary name beside it (``.NAME.*.tmp``); returns the new path."""
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.replace(path, aside)
    return aside


def remove_directory(path: str | Path) -> None:
    """Delete a directory by renaming it to a hidden temporary name first, so that it is never seen half
    deleted under its own name; a killed deletion leaves only ``.NAME.*.tmp`` (see ``remove_leftovers``)."""
    shutil.rmtree(_move_aside(Path(path)), ignore_errors=True)


def remove_leftovers(directory: str | Path) -> list[Path]:
    """Delete the temporary files and directories (``.NAME.*.tmp``) that killed atomic writes left in
    ``directory``; returns what was removed. Only for directories no other process is writing into."""
    directory = Path(directory)
    removed = sorted(directory.glob(".*.tmp")) if directory.is_dir() else []
    for leftover in removed:
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    return removed


@contextlib.contextmanager
def exclusive_directory(directory: str | Path) -> Iterator[None]:
    """Hold ``DIRECTORY/.latentfm.lock`` (an advisory ``flock``, released by the kernel even when the process
    is killed): a second latentfm process writing into the same directory is refused in one line."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".latentfm.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            raise LatentFMError(
                f"{directory} is in use by another latentfm process (pid {owner}): wait for it to end or stop it"
            ) from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
