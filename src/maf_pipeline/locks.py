"""Runs that share a folder: an exclusive lock per folder, and atomic writes under unique temporary names.

Two ``kedro run`` processes on the same checkpoint folder, feature cache table or image store would resume
from each other's half-written work or trip over each other's temporary files. :func:`folder_lock` takes an
exclusive lock on ``<folder>.lock`` (beside the folder, so the folder itself can be deleted while locked);
the file holds the holder's pid, host, start time and command, so a second run fails at once naming the
first (or waits up to ``wait_s`` seconds for it). The lock is an ``flock``: the kernel drops it when its
holder dies, so a lock left by a killed run is stale by construction and is taken over (with a log line
naming the dead pid). :func:`atomic_write` writes through a temporary file named with the pid and a random
suffix, created with mode ``0o666`` so that the umask applies as for any other file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import secrets
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

POLL_S = 0.2


class FolderLockedError(RuntimeError):
    """Another run holds the folder's lock (and waiting was not allowed, or timed out)."""


def lock_path(folder: str | os.PathLike) -> Path:
    """The lock file of ``folder``: ``<folder>.lock`` beside it."""
    folder = Path(folder)
    return folder.with_name(folder.name + ".lock")


def pid_alive(pid: int) -> bool:
    """Whether a process of this host with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 4096, 0)
        holder = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder.get("pid"):
        return "a run that has not yet written its details"
    pid = holder["pid"]
    note = " (this process)" if pid == os.getpid() and holder.get("host") == socket.gethostname() else ""
    return (
        f"pid {pid}{note} on {holder.get('host', '?')}, started {holder.get('started', '?')}: "
        f"{holder.get('command', '?')}"
    )


class FolderLock:
    """An exclusive, inter-process lock on a folder (see the module docstring); use as a context manager.

    ``wait_s``: 0 fails at once when another run holds the lock, a positive number waits up to that many
    seconds, ``None`` waits as long as it takes. ``what`` and ``parameter`` name the folder and the
    parameter that sets ``wait_s`` in messages.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        wait_s: float | None = 0,
        what: str = "folder",
        parameter: str | None = None,
    ) -> None:
        if wait_s is not None and float(wait_s) < 0:
            raise ValueError(f"{parameter or 'wait_s'} must be >= 0 or null, got {wait_s}")
        self.folder = Path(folder)
        self.path = lock_path(self.folder)
        self.wait_s = None if wait_s is None else float(wait_s)
        self.what = what
        self.parameter = parameter
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        """Take the lock, waiting as ``wait_s`` says; raises :class:`FolderLockedError` naming the holder."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this FolderLock")
        deadline = None if self.wait_s is None else time.monotonic() + self.wait_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        announced = False
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                if deadline is not None and time.monotonic() >= deadline:
                    raise FolderLockedError(self._busy_message(holder)) from None
                if not announced:
                    logger.warning(
                        "%s %s is in use by %s; waiting%s",
                        *(self.what, self.folder, _describe(holder)),
                        "" if self.wait_s is None else f" up to {self.wait_s:g} s",
                    )
                    announced = True
                time.sleep(POLL_S)
                continue
            except BaseException:
                os.close(fd)
                raise
            # The previous holder unlinks the file when it releases: make sure ours is still the one there.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = _read_holder(fd)
            same_host = previous.get("host") == socket.gethostname()
            if previous.get("pid") and same_host and not pid_alive(int(previous["pid"])):
                logger.warning(
                    "%s %s: taking over the stale lock of pid %s, which is no longer running",
                    *(self.what, self.folder, previous["pid"]),
                )
            self._fd = fd
            self._write_holder()
            return self

    def _write_holder(self) -> None:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:500],
        }
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(holder).encode(), 0)

    def _busy_message(self, holder: dict[str, Any]) -> str:
        waited = "" if not self.wait_s else f" (waited {self.wait_s:g} s)"
        how = (
            f"; or set {self.parameter} to a number of seconds to wait for it (null: no limit)"
            if self.parameter
            else ""
        )
        return (
            f"{self.what} {self.folder} is in use by another run{waited}: {_describe(holder)}. "
            f"Wait for that run to finish or stop it{how}. Lock file: {self.path}"
        )

    def release(self) -> None:
        """Release the lock and remove its file."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def folder_lock(
    folder: str | os.PathLike | None,
    wait_s: float | None = 0,
    what: str = "folder",
    parameter: str | None = None,
) -> Iterator[FolderLock | None]:
    """:class:`FolderLock` on ``folder`` for the ``with`` block; no lock when ``folder`` is None."""
    if folder is None:
        yield None
        return
    with FolderLock(folder, wait_s, what, parameter) as lock:
        yield lock


def temporary_path(target: str | os.PathLike) -> Path:
    """A hidden temporary name beside ``target``, unique per process and call (pid + random suffix)."""
    target = Path(target)
    return target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def atomic_write(target: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp)`` on a fresh temporary file beside ``target``, then rename it over ``target``.

    Readers never see half a file and concurrent writers never share a temporary file. The temporary file
    is created with mode 0o666 minus the umask (``mkstemp`` would give 0600) and keeps that mode whatever
    the writer does (safetensors writes 0600), so the result has the permissions of any other file.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    mode = stat.S_IMODE(os.fstat(fd).st_mode)  # 0o666 minus the umask, as the kernel applied it
    os.close(fd)
    try:
        write(str(tmp))
        written = os.stat(tmp)
        # writers that replace the file (safetensors: 0600); never a hard link to someone else's file
        if stat.S_IMODE(written.st_mode) != mode and written.st_nlink == 1:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return target
