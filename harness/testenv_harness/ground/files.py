"""Our files: where they live, one lock, one atomic write.

Everything kube-testenv keeps between runs lives under `cache_root()`; every file shared by
processes is either written whole (`write_atomic`) or guarded by `locked`."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


def cache_root() -> Path:
    """Where built tools, images' logs, run state and reservations live; KUBE_TESTENV_CACHE
    overrides the XDG default."""
    explicit = os.environ.get("KUBE_TESTENV_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "kube-testenv"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (made if missing) for the `with` block; another process
    waits. The kernel drops the lock when its holder dies, so a crashed run never leaves it held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def hold_lock(path: Path) -> int | None:
    """Take `path`'s lock for as long as this process lives, without waiting: the open descriptor,
    or None when another live process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def write_atomic(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Write `path` whole: readers see the old file or the new one, never half of it."""
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    with os.fdopen(os.open(staging, flags, mode), "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
    staging.replace(path)
