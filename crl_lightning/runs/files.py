"""The files of a run folder: their names, atomic writes, and the readers of JSON and ``history.csv``."""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "HISTORY_FILENAME",
    "METRICS_FILENAME",
    "PREDICTIONS_FILENAME",
    "RecordError",
    "newest_last_checkpoint",
    "read_history",
    "read_json",
    "utc_now",
    "write_json",
    "write_text_atomic",
]

#: Name of the machine-readable test metrics file that `TestReport` writes and ``crl compare`` reads.
METRICS_FILENAME = "test_metrics.json"
#: Name of the per-epoch history file that `History` writes (one row per training epoch).
HISTORY_FILENAME = "history.csv"
#: Name of the file that `PredictionWriter` writes (``crl predict``).
PREDICTIONS_FILENAME = "predictions.csv"


class RecordError(ValueError):
    """A run-record file that cannot be used; the message names the file and what was expected."""


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


def _jsonable(value: Any) -> Any:
    """``value`` with tensors as lists and non-finite floats as ``None`` (JSON has no NaN)."""
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):  # torch tensors, numpy arrays
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def write_json(path: str | Path, record: Mapping[str, Any]) -> Path:
    """Write ``record`` as indented JSON, atomically (`write_text_atomic`); tensors become lists, NaN ``null``."""
    return write_text_atomic(path, json.dumps(_jsonable(dict(record)), indent=2, default=str) + "\n")


def read_json(path: str | Path) -> dict[str, Any]:
    """The JSON object in ``path``.

    Raises:
        RecordError: the file is missing or unreadable, is not valid JSON (e.g. cut short by a writer that
            did not write atomically), or holds something other than an object; the message names it.
    """
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise RecordError(f"{path}: expected a readable JSON file, got {err.strerror or err}") from err
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise RecordError(f"{path}: expected JSON, got a parse error: {err}") from err
    if not isinstance(value, dict):
        raise RecordError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def read_history(path: str | Path | None) -> list[dict[str, str]]:
    """The rows of a ``history.csv`` (`HISTORY_FILENAME`) as dicts of strings; ``[]`` without a file."""
    if not path or not Path(path).is_file():
        return []
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def utc_now() -> str:
    """The current UTC time as ISO 8601 to the second, e.g. ``2026-12-07T01:22:38+00:00`` (record times)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


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
