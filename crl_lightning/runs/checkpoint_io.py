"""`AtomicCheckpointIO`: Lightning checkpoints written like every other run file, atomically in their folder."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO

from crl_lightning.runs.files import write_bytes_atomic

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local checkpoints are written by `crl_lightning.runs.write_bytes_atomic`.

    Lightning's own writer makes its temporary file in the system temp folder and moves it into place, which
    is a copy when that folder is on another file system: a full disk, a quota or a kill during that copy
    leaves a truncated ``epoch=N-step=M.ckpt`` (or ``last.ckpt``). Here the checkpoint is serialized in memory
    (as Lightning does), written to a temporary file in the checkpoint's own folder, ``fsync``-ed and renamed
    over the destination: a checkpoint file is complete or absent, the earlier ones stay, and a full disk ends
    the run with one `crl_lightning.runs.DiskFullError` naming the folder, the space free and the bytes needed.
    Remote paths (``s3://``, ...) go to Lightning's writer. ``crl`` installs this plugin on every trainer unless
    the configuration names a ``CheckpointIO`` of its own (`crl_lightning.cli.CRLCLI.instantiate_trainer`).

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(plugins=[AtomicCheckpointIO()], logger=False)  # doctest: +SKIP
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` (``torch.save`` format) to ``path`` atomically.

        Args:
            checkpoint: the state Lightning dumps (model, optimizers, loops, callbacks).
            path: the checkpoint file.
            storage_options: unsupported, as in `TorchCheckpointIO` (must be ``None``).

        Raises:
            TypeError: ``storage_options`` was given.
            crl_lightning.runs.DiskFullError: the disk or the quota ran out; nothing is left at ``path``'s
                temporary file and an existing file at ``path`` is untouched.
        """
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_bytes_atomic(Path(path), buffer.getbuffer())
