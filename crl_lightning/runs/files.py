"""The files of a run folder: their names, atomic writes, and the readers of JSON and ``history.csv``."""

from __future__ import annotations

import csv
import datetime
import errno
import json
import logging
import math
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "remove_config_only_run_dir",
    "HISTORY_FILENAME",
    "METRICS_FILENAME",
    "PREDICTIONS_FILENAME",
    "TEMP_SUFFIX",
    "DiskFullError",
    "RecordError",
    "check_checkpoint",
    "newest_last_checkpoint",
    "read_checkpoint_entry",
    "read_history",
    "read_json",
    "utc_now",
    "write_bytes_atomic",
    "write_json",
    "write_text_atomic",
]

#: Name of the machine-readable test metrics file that `TestReport` writes and ``crl compare`` reads.
METRICS_FILENAME = "test_metrics.json"
#: Name of the per-epoch history file that `History` writes (one row per training epoch).
HISTORY_FILENAME = "history.csv"
#: Name of the file that `PredictionWriter` writes (``crl predict``).
PREDICTIONS_FILENAME = "predictions.csv"
#: Suffix of the temporary files of `write_bytes_atomic` (``.<name>.<random>.tmp``, removed on failure).
TEMP_SUFFIX = ".tmp"
#: The ``errno`` values of a full disk or an exceeded quota (`DiskFullError`).
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_log = logging.getLogger(__name__)


class RecordError(ValueError):
    """A run-record file that cannot be used; the message names the file and what was expected."""


class DiskFullError(OSError):
    """A file write that ran out of disk space or quota (``ENOSPC``, ``EDQUOT``).

    Its message is one line naming the file's folder, the space free there and the bytes the write needed
    (``no space left on device to write last.ckpt in runs/x/checkpoints: 1.2 MB free, 2.3 MB needed; ...``).
    The file's previous version (or the earlier checkpoints) is untouched.

    Attributes:
        path: the file that could not be written.
        needed: the bytes the write needed.
        free: the bytes free in its folder's file system (``shutil.disk_usage``) after the failed write;
            ``None`` when that could not be read. A quota can end a write with space free on the disk.
    """

    def __init__(self, path: Path, needed: int, cause: OSError) -> None:
        try:
            free: int | None = shutil.disk_usage(path.parent).free
        except OSError:
            free = None
        reason = "quota exceeded" if cause.errno == getattr(errno, "EDQUOT", None) else "no space left on device"
        message = (f"{reason} to write {path.name} in {path.parent}: {_size(free)} free, {_size(needed)} needed; "
                   "the earlier files are kept: free some space (or write elsewhere) and run the command again "
                   "(crl fit resumes with --ckpt_path last)")
        super().__init__(cause.errno, message, str(path))
        self.path, self.needed, self.free = path, needed, free

    def __str__(self) -> str:
        return str(self.strerror)


def _size(n: int | None) -> str:
    """``n`` bytes as ``'1.2 MB'`` (decimal units), ``'unknown'`` for ``None``."""
    if n is None:
        return "unknown"
    if n < 1000:
        return f"{n} bytes"
    size, unit = n / 1000, "kB"
    for bigger in ("MB", "GB", "TB"):
        if size < 1000:
            break
        size, unit = size / 1000, bigger
    return f"{size:.1f} {unit}"


def write_bytes_atomic(path: str | Path, data: bytes | memoryview) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, ``fsync`` and ``os.replace``.

    Readers see either the old file (or none) or the complete new one, never a partial write: the temporary
    file (``.<name>.<random>.tmp``) is on the destination's own file system, so the rename is atomic (on POSIX
    and Windows), and a crash, a kill or a full disk at any moment leaves the old file as it was. Parent
    folders are created.

    Args:
        path: the file to (over)write.
        data: its new content.

    Returns:
        ``path`` as a `Path`.

    Raises:
        DiskFullError: the disk or the quota ran out (``ENOSPC``, ``EDQUOT``); the temporary file is removed.
        OSError: the folder cannot be created or written (the temporary file is removed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    umask = os.umask(0)
    os.umask(umask)
    try:
        try:
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in _DISK_FULL:
            raise DiskFullError(path, len(data), err) from err
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically (`write_bytes_atomic`)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


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


def check_checkpoint(path: str | Path) -> None:
    """Refuse a missing, truncated or corrupt checkpoint file before Lightning unpickles it.

    A checkpoint written by ``torch.save`` (Lightning's) is a zip archive with a CRC-32 checksum per record;
    every record is read and checked (nothing is unpickled), so a file cut short by a full disk or a killed
    copy, or with damaged bytes, is named here instead of failing deep inside ``torch.load``. A folder (a
    sharded checkpoint, e.g. DeepSpeed's) is left to Lightning.

    Args:
        path: the checkpoint file or folder.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a complete zip archive, or a record fails its checksum; the message names
            the file.
    """
    path = Path(path)
    if path.is_dir():
        return
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path: expected a checkpoint file, got {path} (no such file)")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ValueError(f"ckpt_path: expected a complete checkpoint (a torch.save zip archive), got {path}, "
                         f"which is truncated or corrupt ({err})") from err
    if bad is not None:
        raise ValueError(f"ckpt_path: expected a complete checkpoint, got {path}, whose record {bad} fails its "
                         "checksum (corrupt file)")


def read_checkpoint_entry(ckpt_path: str | Path, key: str) -> Any | None:
    """The top-level entry ``key`` of a checkpoint file, or ``None`` (no such entry, a folder, an unreadable file).

    Only the checkpoint's pickled structure is read (its tensors are memory-mapped, not loaded), so reading an
    entry of a large checkpoint is cheap. Errors are left to Lightning, which reads the file after this.
    """
    import torch

    path = Path(ckpt_path)
    if not path.is_file():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception:  # noqa: BLE001 -- Lightning reports an unreadable checkpoint when it loads it
        return None
    return checkpoint.get(key) if isinstance(checkpoint, dict) else None


def newest_last_checkpoint(root: str | Path) -> Path | None:
    """The most recently modified complete ``last.ckpt`` anywhere under ``root``, or ``None`` when there is none.

    ``ModelCheckpoint(save_last=True)`` (every example config) writes ``last.ckpt`` at the end of every epoch
    into the run's ``checkpoints/`` folder, and each run gets a new folder (``lightning_logs/version_N``,
    a W&B run id): this finds the latest one over all of them. A file that is not a complete checkpoint
    (`check_checkpoint`: cut short by a full disk or a copy killed under an older version) is skipped with a
    warning naming it, so a resume starts from the newest intact one.

    Args:
        root: the folder searched recursively, e.g. ``trainer.default_root_dir``.

    Returns:
        The path, or ``None`` when ``root`` holds no complete ``last.ckpt`` (or does not exist).
    """
    root = Path(root)
    found = sorted(root.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True) if root.is_dir() else []
    for path in found:
        try:
            check_checkpoint(path)
        except (ValueError, FileNotFoundError) as err:
            _log.warning("crl: skipping %s: %s", path, err)
            continue
        return path
    return None


#: What a run folder holds before anything ran: the config (`SaveConfigCallback`) and the logger's hparams.
_CONFIG_FILES = frozenset({"config.yaml", "hparams.yaml"})


def remove_config_only_run_dir(folder: Path) -> bool:
    """Remove ``folder`` when it holds nothing but `_CONFIG_FILES` (a run that failed before writing results).

    Returns:
        True when it was removed; False when it does not exist or holds anything else.
    """
    if not folder.is_dir() or not {p.name for p in folder.iterdir()} <= _CONFIG_FILES:
        return False
    for name in _CONFIG_FILES:
        (folder / name).unlink(missing_ok=True)
    folder.rmdir()
    return True
