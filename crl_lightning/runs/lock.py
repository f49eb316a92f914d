"""`folder_lock`: one command at a time on a ``crl study`` or ``crl cv`` folder (``<folder>/.crl.lock``)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crl_lightning.runs.files import utc_now, write_text_atomic

__all__ = ["LOCK_FILENAME", "FolderLockedError", "folder_lock"]

#: Name of the lock file `folder_lock` creates in the folder it locks.
LOCK_FILENAME = ".crl.lock"


class FolderLockedError(RuntimeError):
    """The folder is locked by another live command; the message names its host, process id and start time."""


def _holder(lock: Path) -> dict[str, Any] | None:
    """The lock file's ``{host, pid, started, command}``; ``None`` when it vanished or is not such a record."""
    try:
        value = json.loads(lock.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # not a lock record: not made by folder_lock
    return value if isinstance(value, dict) else {}


def _alive(pid: Any) -> bool:
    """Whether process ``pid`` exists on this host (one we may not signal counts as alive)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def folder_lock(folder: str | Path, command: str = "crl") -> Iterator[Path]:
    """Hold ``<folder>/.crl.lock`` (`LOCK_FILENAME`) while the block runs, so two commands never share a folder.

    The lock file holds JSON ``{"host", "pid", "started", "command"}``; it is made complete in a temporary file
    and hard-linked to ``.crl.lock``, which, like ``O_CREAT | O_EXCL``, fails when the lock exists, and leaves no
    half-written lock. It is removed when the block ends, however it ends. A lock left by a
    process that no longer runs on this host (killed, or the machine lost power before a reboot) is taken over
    with a warning line on stderr; a lock of a live process, or of another host (whose processes cannot be
    checked from here), is refused. A lock file that is not such a record (not written by `folder_lock`)
    counts as stale.

    Args:
        folder: the folder to lock (created when missing).
        command: what holds the lock, recorded in the file (e.g. ``"crl study"``).

    Yields:
        The lock file's path.

    Raises:
        FolderLockedError: another live command holds the lock; the one-line message names its host, pid and
            start time, and the lock file to delete if that process is known to be gone.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILENAME
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": utc_now(), "command": command}
    record = folder / f".crl.lock.{me['pid']}.tmp"
    write_text_atomic(record, json.dumps(me) + "\n")
    try:
        while True:
            try:
                os.link(record, lock)  # atomic and exclusive, like O_CREAT | O_EXCL, and never a half-written lock
                break
            except FileExistsError:
                holder = _holder(lock)
            if holder is None:
                continue  # released between the two calls: try again
            if holder and (holder.get("host") != me["host"] or _alive(holder.get("pid"))):
                raise FolderLockedError(
                    f"{folder}: expected a folder no other command is using, got one locked by "
                    f"{holder.get('command', 'crl')} (host {holder.get('host')}, pid {holder.get('pid')}, started "
                    f"{holder.get('started')}); wait for it to end, or delete {lock} if that process is gone"
                )
            what = (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}, is not running"
                    if holder else "the file is not a lock record")
            print(f"crl: warning: taking over the stale lock {lock} ({what})", file=sys.stderr, flush=True)
            lock.unlink(missing_ok=True)
    finally:
        record.unlink(missing_ok=True)
    try:
        yield lock
    finally:
        if _holder(lock) == me:
            lock.unlink(missing_ok=True)
