"""Result files written atomically (a crash or a kill never leaves a half-written one), and the checkpoint to resume."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["newest_last_checkpoint", "write_text_atomic"]


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file in the same folder and a rename.

    Readers see either the old file (or none) or the complete new one, never a partial write: the
    rename is atomic on POSIX and Windows file systems. Parent folders are created.

    Args:
        path: the file to (over)write.
        text: its new content.

    Returns:
        ``path`` as a `Path`.

    Raises:
        OSError: the folder cannot be created or written (the temporary file is removed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def newest_last_checkpoint(root: str | Path) -> Path | None:
    """The most recently modified ``last.ckpt`` anywhere under ``root``, or ``None`` when there is none.

    ``ModelCheckpoint(save_last=True)`` (every example config) writes ``last.ckpt`` at the end of every epoch
    into the run's ``checkpoints/`` folder, and each run gets a new folder (``lightning_logs/version_N``,
    a W&B run id): this finds the latest one over all of them.

    Args:
        root: the folder searched recursively, e.g. ``trainer.default_root_dir``.

    Returns:
        The path, or ``None`` when ``root`` holds no ``last.ckpt`` (or does not exist).
    """
    root = Path(root)
    return max(root.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime, default=None) if root.is_dir() else None
