"""Our files: where they live, who may touch them, one lock, one atomic write.

Everything kube-testenv keeps between runs lives under `cache_root()`: built tools and jars it
runs, and the state files whose PIDs it signals and whose kubeconfig paths it passes on. So the
root and the folders of shared state in it (`private_dir`) are this user's alone (0700, owned
by them), and state files are opened without following symbolic links (`read_private`,
`open_private`). Every file shared by processes is either written whole (`write_atomic`) or
guarded by `locked`."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from testenv_harness.ground.errors import TestEnvError

#: Who may enter our folders: this user only.
PRIVATE = 0o700
#: Flags every open of one of our files adds: never through a symbolic link, never inherited.
_SAFE = os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeFileError(TestEnvError):
    """A folder or file of ours is someone else's, writable by others, or a symbolic link."""


def _cache_path() -> Path:
    explicit = os.environ.get("KUBE_TESTENV_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "kube-testenv"


def cache_root() -> Path:
    """Where built tools, images' logs, run state and reservations live; KUBE_TESTENV_CACHE
    overrides the XDG default. Made 0700 if missing; refused if it is not this user's alone
    (see `private_dir`)."""
    path = _cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # The root may be a symbolic link the user made (to a bigger disk): its target is checked.
    return private_dir(path, follow=True)


def private_dir(path: Path, *, follow: bool = False) -> Path:
    """`path` as a folder only this user can enter: made 0700 if missing, and UnsafeFileError if
    it is a symbolic link (unless `follow`), not a folder, owned by another user, or writable by
    group or others.

    A folder of ours that others may only read or enter (0755: what versions before this one
    made, with the usual umask) is tightened to 0700: nobody else could have put anything in it.
    One that others may write to is refused, not tightened: anyone of that group may have left a
    file or a link there (a tool we would run, a state file whose PID we would signal), and
    chmod would not take that back. Its owner checks it and runs `chmod 700`, or points
    KUBE_TESTENV_CACHE elsewhere.
    """
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, PRIVATE)
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            what = "a symbolic link" if path.is_symlink() else "not a folder"
            raise UnsafeFileError(
                f"{path} is {what}; kube-testenv keeps its own folder there: remove it (`rm {path}`) "
                "and run again, or set KUBE_TESTENV_CACHE to a folder of your own"
            ) from exc
        raise
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            raise UnsafeFileError(
                f"{path} belongs to uid {info.st_uid}, not to you (uid {os.geteuid()}): kube-testenv runs "
                "programs and signals processes named in there, so it uses only a folder of your own: "
                "set KUBE_TESTENV_CACHE to one (or, if the folder is yours, `chown -R` it back)"
            )
        if info.st_mode & 0o022:
            raise UnsafeFileError(
                f"{path} is writable by {_who(info.st_mode)} (mode {stat.filemode(info.st_mode)}): any of "
                "them could have put a program or a state file in it that kube-testenv would trust; "
                f"check what it holds, then `chmod 700 {path}`, or set KUBE_TESTENV_CACHE to a folder of "
                "your own"
            )
        if info.st_mode & 0o077:
            try:
                os.fchmod(fd, PRIVATE)
            except OSError as exc:  # a read-only file system, say
                raise UnsafeFileError(
                    f"{path} is open to others (mode {stat.filemode(info.st_mode)}) and could not be made "
                    f"0700 ({exc.strerror}): `chmod 700 {path}`, or set KUBE_TESTENV_CACHE to a folder of "
                    "your own"
                ) from exc
    finally:
        os.close(fd)
    return path


def _who(mode: int) -> str:
    group, others = bool(mode & stat.S_IWGRP), bool(mode & stat.S_IWOTH)
    return "its group and everyone" if group and others else "its group" if group else "everyone"


def _refuse_link(path: Path) -> UnsafeFileError:
    return UnsafeFileError(
        f"{path} is a symbolic link; kube-testenv writes a plain file there and follows no link: "
        f"remove it (`rm {path}`)"
    )


def open_private(path: Path, flags: int, mode: int = 0o600) -> int:
    """`os.open` of one of our files, never through a symbolic link (UnsafeFileError)."""
    try:
        return os.open(path, flags | _SAFE, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse_link(path) from exc
        raise


def read_private(path: Path) -> str:
    """The text of one of our state files: not through a symbolic link, a plain file, this user's
    (UnsafeFileError otherwise); OSError (FileNotFoundError, ...) as reading raises it."""
    fd = open_private(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO put there must not block us
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            raise UnsafeFileError(
                f"{path} is not a plain file of yours (mode {stat.filemode(info.st_mode)}, uid "
                f"{info.st_uid}); kube-testenv wrote none such: remove it (`rm {path}`)"
            )
        return handle.read().decode()


def open_log(path: Path) -> BinaryIO:
    """`path` emptied (made if missing) and open for appending, for a background process's output."""
    fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
    return os.fdopen(fd, "ab")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (made if missing) for the `with` block; another process
    waits. The kernel drops the lock when its holder dies, so a crashed run never leaves it held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = open_private(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def hold_lock(path: Path) -> int | None:
    """Take `path`'s lock for as long as this process lives, without waiting: the open descriptor,
    or None when another live process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = open_private(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def lock_held(path: Path) -> bool:
    """Whether a process holds `path`'s lock now (`hold_lock`, `locked`), without waiting.

    Asks for a shared lock and lets it go at once: it conflicts only with a holder's exclusive
    one. For that instant a `hold_lock` of the same file fails; a taker that must not give up
    because of a look like this one tries again (see reuse.Claim.take)."""
    try:
        fd = open_private(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def write_atomic(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Write `path` whole: readers see the old file or the new one, never half of it. A symbolic
    link at `path` is replaced, not followed."""
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.unlink(missing_ok=True)  # left by a process of this pid that died while writing
    fd = open_private(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
    staging.replace(path)
