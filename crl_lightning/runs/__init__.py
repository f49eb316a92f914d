"""The run record: which experiment a run belongs to, the files it writes, and how they are written and read.

Every command that reads runs asks this module. ``crl compare`` pools only runs of one experiment, ``crl study``
and ``crl cv`` refuse to reuse a run folder of another experiment, and the W&B group is the experiment's name.

An **experiment** is what a result depends on: the resolved configuration's ``model``, ``data`` and ``trainer``
sections (the model class, its network, criterion with its parameters, optimizer, schedule, epochs, data
options and augmentation), without what only says *where* or *which repeat*: the seed (``seed_everything``,
``data.init_args.seed``), the fold (``data.init_args.fold``), paths (``default_root_dir``, ``dirpath``,
``*_dir``, ``*_path``, ``root``, ...), the logger, progress-bar and model-summary settings (`NOT_IDENTIFYING`).
`experiment_identity` turns those settings into a stable digest (``id``) and a short readable ``label``.
A **run** is one experiment trained with one seed (and fold); a **rerun** is another run of the same
experiment, seed and fold (`rerun_key`), of which a table counts only the newest.

The files of a run folder (`run_dir`): ``test_metrics.json`` (`METRICS_FILENAME`, written by
`crl_lightning.callbacks.TestReport`; format `METRICS_FORMAT`), ``history.csv`` (`HISTORY_FILENAME`) and, for
``crl predict``, ``predictions.csv`` (`PREDICTIONS_FILENAME`). Every file is written atomically
(`write_bytes_atomic`: a temporary file in the destination folder, ``fsync``, ``os.replace``), so a crash, a kill
or a full disk never leaves a half-written one (a full disk or quota ends the command with one `DiskFullError`
line naming the folder, the space free and the bytes needed), and read back by `read_record` and
`read_history`. Checkpoints are written the same way by `AtomicCheckpointIO`, the Lightning plugin that ``crl``
installs, and `newest_last_checkpoint` (``--ckpt_path last``) skips a checkpoint that is not complete. A
``crl study`` or ``crl cv`` folder is used by one command at a time (`folder_lock`, ``<folder>/.crl.lock``).
"""

from crl_lightning.runs.checkpoint_io import AtomicCheckpointIO
from crl_lightning.runs.files import (
    HISTORY_FILENAME,
    METRICS_FILENAME,
    PREDICTIONS_FILENAME,
    TEMP_SUFFIX,
    DiskFullError,
    RecordError,
    check_checkpoint,
    newest_last_checkpoint,
    read_checkpoint_entry,
    read_history,
    read_json,
    remove_config_only_run_dir,
    utc_now,
    write_bytes_atomic,
    write_json,
    write_text_atomic,
)
from crl_lightning.runs.identity import (
    CHECKPOINT_KEY,
    METRICS_FORMAT,
    NOT_IDENTIFYING,
    checkpoint_run,
    config_changes,
    criterion_info,
    experiment_id,
    experiment_identity,
    experiment_name,
    experiment_settings,
    first_loader,
    flatten_config,
    read_record,
    rerun_key,
    resolved_config,
    run_dir,
    run_identity,
    same_experiment,
)
from crl_lightning.runs.lock import LOCK_FILENAME, FolderLockedError, folder_lock

__all__ = [
    "CHECKPOINT_KEY",
    "HISTORY_FILENAME",
    "LOCK_FILENAME",
    "METRICS_FILENAME",
    "METRICS_FORMAT",
    "NOT_IDENTIFYING",
    "PREDICTIONS_FILENAME",
    "TEMP_SUFFIX",
    "AtomicCheckpointIO",
    "DiskFullError",
    "FolderLockedError",
    "RecordError",
    "check_checkpoint",
    "checkpoint_run",
    "config_changes",
    "criterion_info",
    "experiment_id",
    "experiment_identity",
    "experiment_name",
    "experiment_settings",
    "first_loader",
    "flatten_config",
    "folder_lock",
    "newest_last_checkpoint",
    "read_checkpoint_entry",
    "read_history",
    "read_json",
    "read_record",
    "remove_config_only_run_dir",
    "rerun_key",
    "resolved_config",
    "run_dir",
    "run_identity",
    "same_experiment",
    "utc_now",
    "write_bytes_atomic",
    "write_json",
    "write_text_atomic",
]
