"""Which experiment a run belongs to: the identifying settings, their digest and label, reruns, the trainer's run."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from crl_lightning.runs.files import RecordError, _jsonable, read_checkpoint_entry, read_json

__all__ = [
    "CHECKPOINT_KEY",
    "METRICS_FORMAT",
    "NOT_IDENTIFYING",
    "checkpoint_run",
    "config_changes",
    "criterion_info",
    "experiment_id",
    "experiment_identity",
    "experiment_name",
    "experiment_settings",
    "first_loader",
    "flatten_config",
    "read_record",
    "rerun_key",
    "resolved_config",
    "run_dir",
    "run_identity",
    "same_experiment",
]

#: Key of a checkpoint (dict) under which `TestReport` keeps the identity of the run that trained it.
CHECKPOINT_KEY = "crl_run"
#: Format tag of the metrics files written now; `read_record` also reads `_OLD_FORMATS`.
METRICS_FORMAT = "crl_lightning.test_metrics/2"
#: Earlier format tags that `read_record` still reads (their experiment is derived from their ``config``).
_OLD_FORMATS = ("crl_lightning.test_metrics/1",)

#: Sections of the resolved configuration that make up an experiment.
_SECTIONS = ("model", "data", "trainer")
#: Keys (at any depth of those sections) that never identify an experiment: seed, fold, where files go, what is
#: printed or logged. Keys ending in ``_dir``, ``_path`` or ``_file`` are paths too.
NOT_IDENTIFYING = frozenset({
    "seed", "fold", "root", "dirpath", "filename", "download", "check_files", "val_labels",
    "logger", "enable_progress_bar", "enable_model_summary", "log_every_n_steps", "num_sanity_val_steps",
})
_PATH_SUFFIXES = ("_dir", "_path", "_file")
#: Callbacks that only print or log (left out of an experiment's ``trainer.callbacks``).
_DISPLAY_CALLBACKS = ("ProgressBar", "LearningRateMonitor", "PredictionWriter", "ModelSummary")
#: Short criterion names used in labels; other classes use their name without a trailing ``Loss``.
_SHORT_NAMES = {"CompetingRatioLoss": "CRL", "CrossEntropyLoss": "CE"}
#: Constructor arguments that never identify a criterion.
_NOT_IDENTIFYING_ARGS = {"ignore_index", "reduction", "size_average", "reduce"}


def read_record(path: str | Path) -> dict[str, Any]:
    """A ``test_metrics.json`` record, checked and completed; its ``path`` is added.

    A record of an earlier format (`_OLD_FORMATS`) gets the fields that format lacked: its ``experiment`` from
    its ``config`` (`experiment_identity`), ``command`` ``"fit"``, ``fold`` from the config.

    Raises:
        RecordError: not JSON (`read_json`), a ``format`` tag other than `METRICS_FORMAT` or `_OLD_FORMATS`,
            or a missing ``dataset``/``backbone``/``criterion``/``metrics`` key; the message names the file.
    """
    record = read_json(path)
    tag = record.get("format")
    if tag != METRICS_FORMAT and tag not in _OLD_FORMATS:
        raise RecordError(f"{path}: expected a metrics file of format {METRICS_FORMAT} "
                          f"(or {', '.join(_OLD_FORMATS)}), got format {tag!r}")
    missing = [k for k in ("dataset", "backbone", "criterion", "metrics") if k not in record]
    if missing:
        raise RecordError(f"{path}: expected the keys dataset, backbone, criterion, metrics; missing {missing}")
    if tag in _OLD_FORMATS:
        config = record.get("config") or {}
        record.setdefault("command", "fit")
        record.setdefault("fold", ((config.get("data") or {}).get("init_args") or {}).get("fold"))
        record["experiment"] = experiment_identity(
            config, dataset=record["dataset"], network=record["backbone"], criterion=record["criterion"])
    record["path"] = str(path)
    return record


def run_dir(trainer: Any) -> Path:
    """The directory of this run (a `lightning.Trainer`'s), where its checkpoints also go.

    * a logger with a ``log_dir`` (TensorBoard, CSV): that, e.g. ``<root>/lightning_logs/version_3``;
    * another logger (W&B): ``<save_dir or default_root_dir>/<name>/<version>``, the same folder that
      `lightning.pytorch.callbacks.ModelCheckpoint` puts its ``checkpoints/`` in;
    * no logger: ``trainer.default_root_dir``.
    """
    if not trainer.loggers:
        return Path(trainer.default_root_dir)
    logger = trainer.loggers[0]
    log_dir = getattr(logger, "log_dir", None)
    if log_dir:
        return Path(log_dir)
    save_dir = logger.save_dir or trainer.default_root_dir
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    return Path(save_dir) / str(logger.name) / version


_UNSET = object()


# ----- identity -----------------------------------------------------------------------------------------------
def criterion_info(criterion: Any) -> dict[str, Any]:
    """Name, key hyper-parameters and a short label of a criterion (an ``nn.Module``), for tables and run names.

    The parameters are the numeric (not bool) constructor arguments stored as same-named attributes,
    without ``ignore_index``/``reduction`` and without those left at a zero default (an option that is
    off, e.g. ``label_smoothing=0``). So ``CompetingRatioLoss(alpha=1.5, beta=1.0)`` gives the label
    ``"CRL(alpha=1.5, beta=1)"`` and ``CrossEntropyLoss()`` gives ``"CE"``.

    Args:
        criterion: the loss module, or ``None``.

    Returns:
        ``{"name": class name, "class_path": module.qualname, "params": {name: number}, "label": str}``.
    """
    if criterion is None:
        return {"name": None, "class_path": None, "params": {}, "label": "unknown"}
    cls = type(criterion)
    params: dict[str, float | int] = {}
    try:
        signature = inspect.signature(cls.__init__)
    except (TypeError, ValueError):  # builtins without a signature
        signature = None
    for name, p in (signature.parameters.items() if signature else ()):
        if name == "self" or name in _NOT_IDENTIFYING_ARGS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        value = getattr(criterion, name, None)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if value == 0 and p.default == 0:
            continue
        params[name] = value
    short = _SHORT_NAMES.get(cls.__name__, cls.__name__.removesuffix("Loss") or cls.__name__)
    label = short + (f"({', '.join(f'{k}={v:g}' for k, v in params.items())})" if params else "")
    return {"name": cls.__name__, "class_path": f"{cls.__module__}.{cls.__qualname__}", "params": params,
            "label": label}


def _identifying(key: str) -> bool:
    return key == "class_path" or key not in NOT_IDENTIFYING and not key.endswith(_PATH_SUFFIXES)


def _settings(value: Any) -> Any:
    """``value`` without the keys that do not identify an experiment (recursively) and display-only callbacks."""
    if isinstance(value, Mapping):
        return {str(k): _settings(v) for k, v in sorted(value.items()) if _identifying(str(k))}
    if isinstance(value, list | tuple):
        kept = [v for v in value
                if not (isinstance(v, Mapping) and str(v.get("class_path", "")).endswith(_DISPLAY_CALLBACKS))]
        return [_settings(v) for v in kept]
    return _jsonable(value)


def _short_class(class_path: Any) -> str:
    return str(class_path).rpartition(".")[2] if class_path else ""


def experiment_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The identifying settings of a resolved configuration (its ``model``, ``data`` and ``trainer`` sections).

    Left out: `NOT_IDENTIFYING` keys, paths (``*_dir``, ``*_path``, ``*_file``) and display-only callbacks.
    """
    return {section: _settings(config[section]) for section in _SECTIONS if config.get(section) is not None}


def experiment_id(settings: Mapping[str, Any]) -> str:
    """The stable digest (12 hex digits of SHA-256 over sorted-key JSON) of `experiment_settings`."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def experiment_identity(
    config: Mapping[str, Any] | None, *, dataset: str, network: str, criterion: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The experiment a run belongs to: a digest and a readable label of its identifying settings.

    Args:
        config: the resolved configuration (LightningCLI's, as saved in ``config.yaml``); its
            `experiment_settings` identify the experiment. It names the model class, its network (``backbone``,
            or the subclass that builds its own), the criterion with its parameters, the optimizer, schedule,
            epochs and every data option. Without one (``None`` or empty: e.g. a record of a ``fast_dev_run``)
            the dataset, network and criterion alone identify it.
        dataset: the DataModule's class name, e.g. ``"DigitsDataModule"``.
        network: the network actually built (`crl_lightning.ImageClassifier`'s ``backbone`` name, or the class
            of the network a subclass builds itself).
        criterion: `criterion_info` of the criterion.

    Returns:
        ``{"id": `experiment_id`, "label": "<dataset>/<network>/<criterion label>", "settings": {...}}``; the label
        starts with the model class when that is not ``ImageClassifier``. Two runs are of the same experiment
        exactly when their ``id`` is the same (`same_experiment`).
    """
    criterion_label = str((criterion or {}).get("label") or "unknown")
    settings = experiment_settings(config or {}) or {
        "dataset": dataset, "network": network, "criterion": criterion_label}
    model_class = _short_class(((config or {}).get("model") or {}).get("class_path"))
    prefix = f"{model_class}/" if model_class and model_class != "ImageClassifier" else ""
    label = f"{prefix}{dataset.removesuffix('DataModule') or dataset}/{network}/{criterion_label}"
    return {"id": experiment_id(settings), "label": label, "settings": settings}


def experiment_name(experiment: Mapping[str, Any]) -> str:
    """``"<label> #<id>"`` of an `experiment_identity`: readable and unique (the W&B group, ``crl compare`` rows)."""
    return f"{experiment['label']} #{experiment['id']}"


def same_experiment(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two records (or two `experiment_identity` dicts) are of the same experiment: the same ``id``."""
    ida = (a.get("experiment") or a).get("id")
    idb = (b.get("experiment") or b).get("id")
    return ida is not None and ida == idb


def rerun_key(record: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """What makes two records reruns of one another; ``None`` for a record without a seed (it repeats nothing).

    The key is the experiment, seed, fold, command and, for a ``crl test`` of a checkpoint, the run that trained it.
    """
    if record.get("seed") is None:
        return None
    trained_by = (record.get("trained_by") or {}).get("run_dir") if record.get("command") == "test" else None
    return (record["experiment"]["id"], record["seed"], record.get("fold"), record.get("command"), trained_by)


def flatten_config(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b.c": leaf}`` of a nested config; list items are keyed by their index (``callbacks.0.init_args``)."""
    if isinstance(value, Mapping):
        items: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in items:
        flat.update(flatten_config(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat if flat or not prefix else {prefix: value}


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 6) -> str:
    """The keys in which two experiments' settings differ, as one line: ``data.init_args.batch_size: 128 -> 16``.

    Args:
        old: the ``settings`` of the earlier experiment (`experiment_identity`).
        new: the ``settings`` of the new one.
        limit: at most this many keys are named, then ``(+N more)``.

    Returns:
        ``"key: old -> new; key2: (unset) -> value"``, or ``""`` when they do not differ.
    """
    a, b = flatten_config(old), flatten_config(new)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, _UNSET) != b.get(k, _UNSET))

    def show(flat: dict[str, Any], key: str) -> str:
        return "(unset)" if key not in flat else json.dumps(flat[key], default=str)

    parts = [f"{k}: {show(a, k)} -> {show(b, k)}" for k in keys[:limit]]
    return "; ".join(parts) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


# ----- identity of a Lightning run ----------------------------------------------------------------------------
def resolved_config(trainer: Any) -> dict[str, Any] | None:
    """The full resolved LightningCLI config of this run (from its `SaveConfigCallback`), or ``None``.

    ``None`` outside the CLI, and under ``fast_dev_run`` (where LightningCLI adds no such callback).
    """
    import yaml
    from lightning.pytorch.cli import SaveConfigCallback

    for callback in trainer.callbacks:
        if isinstance(callback, SaveConfigCallback):
            return yaml.safe_load(callback.parser.dump(callback.config, skip_none=False))
    return None


def _seed(config: Mapping[str, Any] | None) -> int | None:
    value = os.environ.get("PL_GLOBAL_SEED")  # set by lightning.seed_everything (and so by the CLI)
    if value is None and config is not None:
        value = config.get("seed_everything")
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def first_loader(trainer: Any, attr: str | None = None) -> Any:
    """The first test (else val) dataloader of ``trainer`` or its ``attr``; ``None`` when there is none."""
    loader = trainer.test_dataloaders or trainer.val_dataloaders
    if isinstance(loader, dict):
        loader = list(loader.values())
    if isinstance(loader, list | tuple):
        loader = loader[0] if loader else None
    return getattr(loader, attr, None) if attr is not None and loader is not None else loader


def _network(model: Any) -> str:
    """The network a model actually builds.

    `ImageClassifier`'s ``backbone`` name, unless ``build_backbone`` is overridden (then the built network's class);
    another LightningModule's ``backbone`` hyper-parameter, else the class of its ``backbone``, else its own class.
    """
    from crl_lightning.classifier import ImageClassifier

    hparams = getattr(model, "hparams", {})
    name = hparams.get("backbone") if hasattr(hparams, "get") else None
    own_network = isinstance(model, ImageClassifier) and (
        type(model).build_backbone is not ImageClassifier.build_backbone)
    if name is None or own_network:
        name = type(getattr(model, "backbone", model)).__name__
    return str(name)


def run_identity(trainer: Any, model: Any, datamodule: Any = None) -> dict[str, Any]:
    """What identifies a run of ``trainer``: dataset, network, criterion, seed, fold and its experiment.

    Args:
        trainer: the `lightning.Trainer` (its ``datamodule``, its test/val loaders and the CLI config are read).
        model: the LightningModule (its network and ``criterion`` are read).
        datamodule: the DataModule when it is not attached to ``trainer`` yet (before ``fit``).

    Returns:
        ``{"dataset": DataModule class name (else the test dataset's class, else "unknown"), "backbone": the
        network built (`experiment_identity`), "model": the LightningModule's class name, "criterion":
        `criterion_info`, "seed": int or None, "fold": int or None, "experiment": `experiment_identity`}``.
    """
    datamodule = datamodule if datamodule is not None else trainer.datamodule
    if datamodule is not None:
        dataset = type(datamodule).__name__
    else:
        dataset = type(first_loader(trainer, "dataset")).__name__ if first_loader(trainer) else "unknown"
    config = resolved_config(trainer)
    network = _network(model)
    criterion = criterion_info(getattr(model, "criterion", None))
    fold = ((config or {}).get("data") or {}).get("init_args", {}).get("fold", getattr(datamodule, "fold", None))
    if config is None:  # outside the CLI: the model's and the DataModule's hyper-parameters stand for the config
        config = {"model": {"class_path": f"{type(model).__module__}.{type(model).__qualname__}",
                            "init_args": dict(getattr(model, "hparams", {}))},
                  "data": {"init_args": dict(getattr(datamodule, "hparams", {}))},
                  "trainer": {"max_epochs": trainer.max_epochs, "max_steps": trainer.max_steps}}
    return {
        "dataset": dataset, "backbone": network, "model": type(model).__name__, "criterion": criterion,
        "seed": _seed(config), "fold": fold if isinstance(fold, int) else None,
        "experiment": experiment_identity(config, dataset=dataset, network=network, criterion=criterion),
    }


def checkpoint_run(ckpt_path: str | Path) -> dict[str, Any] | None:
    """The identity of the run that trained a checkpoint (`CHECKPOINT_KEY`: `run_identity`, ``run_dir``, ``epochs``).

    Read with `read_checkpoint_entry` (tensors memory-mapped, not loaded). ``None`` for a folder (a sharded
    checkpoint), an unreadable file, or a checkpoint saved without `TestReport`.
    """
    run = read_checkpoint_entry(ckpt_path, CHECKPOINT_KEY)
    return dict(run) if isinstance(run, Mapping) else None
