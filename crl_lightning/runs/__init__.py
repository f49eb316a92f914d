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
(`write_text_atomic`), so a crash or a kill never leaves a half-written one, and read back by `read_record` and
`read_history`.
"""

from crl_lightning.runs.files import (
    HISTORY_FILENAME,
    METRICS_FILENAME,
    PREDICTIONS_FILENAME,
    RecordError,
    newest_last_checkpoint,
    read_history,
    read_json,
    utc_now,
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

__all__ = [
    "CHECKPOINT_KEY",
    "HISTORY_FILENAME",
    "METRICS_FILENAME",
    "METRICS_FORMAT",
    "NOT_IDENTIFYING",
    "PREDICTIONS_FILENAME",
    "RecordError",
    "checkpoint_run",
    "config_changes",
    "criterion_info",
    "experiment_id",
    "experiment_identity",
    "experiment_name",
    "experiment_settings",
    "first_loader",
    "flatten_config",
    "newest_last_checkpoint",
    "read_history",
    "read_json",
    "read_record",
    "rerun_key",
    "resolved_config",
    "run_dir",
    "run_identity",
    "same_experiment",
    "utc_now",
    "write_json",
    "write_text_atomic",
]
