"""The ``crl`` command: LightningCLI over `ImageClassifier` and any `ImageDataModule`.

``crl fit|validate|test|predict --config CONFIG.yaml [--key value ...]``; configs use LightningCLI's
``class_path``/``init_args`` form for the model, the data, the criterion, the optimizer and the scheduler.
The DataModule's ``num_classes`` and ``in_chans`` are linked into the model.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import BasePredictionWriter, ProgressBar, WeightAveraging
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from crl_lightning.callbacks import CompactProgressBar, PredictionWriter
from crl_lightning.classifier import ImageClassifier
from crl_lightning.config_checks import (
    ConfigError,
    check_config_files,
    check_training_length,
    init_default,
    refuse_replaced_model_values,
    warn_emulated_bf16,
)
from crl_lightning.data.base import ImageDataModule
from crl_lightning.runs import (
    AtomicCheckpointIO,
    check_checkpoint,
    newest_last_checkpoint,
    read_checkpoint_entry,
    remove_config_only_run_dir,
    run_dir,
)
from crl_lightning.wandb_naming import configure_wandb_loggers

__all__ = [
    "CRLCLI",
    "EXTRA_COMMANDS",
    "LINKED_ARGUMENTS",
    "ConfigError",
    "build_cli",
    "check_checkpoint",
    "check_config_files",
    "console_main",
    "main",
    "refuse_replaced_model_values",
    "resolve_ckpt_path",
    "resolve_config",
    "run_summary",
    "weights_to_test",
]

#: The DataModule attributes that the CLI links into the model's init arguments of the same name.
LINKED_ARGUMENTS = ("num_classes", "in_chans")
#: ``ckpt_path`` values that Lightning resolves itself (not file paths; also ``registry:<name>``).
_CKPT_KEYWORDS = ("best", "last", "hpc", "registry")


class CRLCLI(LightningCLI):
    """LightningCLI with data -> model links, ``--test_after_fit``, ``--ckpt_path last`` (`resolve_ckpt_path`).

    Checks, each a one-line error in the ``crl`` command: a ``ckpt_path`` file must be a complete checkpoint
    (`check_checkpoint`, right after parsing); ``fit`` with the default schedule (``model.init_args.lr_scheduler``
    null) needs ``trainer.max_epochs`` (`ConfigError`, before anything is built); a model ``num_classes`` or
    ``in_chans`` that was set (not the default) and differs from the DataModule's is refused (`ConfigError`),
    where the link would silently replace it; so is a model value that was set and differs from the ``ckpt_path``'s
    hyper-parameters, which LightningCLI would silently put in its place (`refuse_replaced_model_values`).
    ``test``/``validate``/``predict`` of a checkpoint give the DataModule the state the checkpoint saved of it
    (its normalisation, `ImageDataModule.state_dict`) before its setup, which then does not read the training
    images again. Checkpoints are written atomically in their folder by `crl_lightning.runs.AtomicCheckpointIO`
    (added to ``trainer.plugins`` unless a ``CheckpointIO`` is configured), so a full disk keeps the earlier ones
    and ends with one line. The progress bar shows only what the model puts on it
    (`CompactProgressBar`); fit and test end with one line naming the run folder and its files (`run_summary`),
    predict with one naming the ``predictions.csv`` it wrote (`PredictionWriter`); a predict that fails leaves
    no run folder holding only its config (`remove_config_only_run_dir`).
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for name in LINKED_ARGUMENTS:
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit", type=bool, default=False,
            help="After `fit`, run `test` on the best checkpoint (the last weights when none was saved).",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as err:
            from crl_lightning.console import unknown_options_message

            parsers = (parser, *getattr(self, "_subcommand_parsers", {}).values())
            options = [o for p in parsers for o in p._option_string_actions]
            message = unknown_options_message(str(err), options)
            if message is None:
                raise
            raise argparse.ArgumentError(None, message) from err
        subcommand = self.config.get("subcommand")  # self.subcommand is set after this
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        keyword = str(path) in _CKPT_KEYWORDS or str(path).startswith("registry:") or "://" in str(path)
        if isinstance(path, str | Path) and not keyword:
            check_checkpoint(path)  # before LightningCLI reads the checkpoint's hyper-parameters
        # the model as given, before LightningCLI puts the checkpoint's hyper-parameters over it
        self._given_model = self.config[subcommand].get("model").clone() if subcommand else None

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        if self._given_model is not None and config.get("ckpt_path"):
            refuse_replaced_model_values(self._given_model.as_dict(), config["model"].as_dict(), config["ckpt_path"])
        if self.subcommand == "fit":
            check_training_length(config.get("trainer.max_epochs"), config.get("trainer.max_steps"))
        schedule = config.get("model.init_args.lr_scheduler", "unset")
        if self.subcommand == "fit" and schedule is None and config.get("trainer.max_epochs") is None:
            raise ConfigError(
                "trainer.max_epochs: expected a number of epochs, got none; the default schedule "
                "(model.init_args.lr_scheduler null) divides the lr by 10 at 50 % and 75 % of trainer.max_epochs "
                "(Lightning alone would train 1000 epochs): set --trainer.max_epochs N, or "
                "model.init_args.lr_scheduler"
            )

    def instantiate_classes(self) -> None:
        given = {name: self.config[self.subcommand].get(f"model.init_args.{name}") for name in LINKED_ARGUMENTS}
        super().instantiate_classes()
        warn_emulated_bf16(self.trainer.precision, isinstance(self.trainer.accelerator, CPUAccelerator))
        for name, value in given.items():
            linked = getattr(self.datamodule, name, None)
            if value not in (None, linked, init_default(type(self.model), name)) and linked is not None:
                raise ConfigError(
                    f"model.init_args.{name}: expected the data's value {linked} ({type(self.datamodule).__name__}."
                    f"{name}, which crl links into the model), got {value} (from the command line, a config or the "
                    "ckpt_path's hyper-parameters)"
                )
        config = self.config_init[self.subcommand]
        config["ckpt_path"] = resolve_ckpt_path(config.get("ckpt_path"), self.trainer.default_root_dir)
        evaluated = config["ckpt_path"] if self.subcommand != "fit" and isinstance(config["ckpt_path"], str) else None
        if evaluated is not None and self.datamodule is not None:
            # the checkpoint's DataModule state (its normalisation) before setup, so setup need not recompute it
            state = read_checkpoint_entry(evaluated, type(self.datamodule).__qualname__)
            if state is not None:
                self.datamodule.load_state_dict(state)
        configure_wandb_loggers(self.trainer, self.model, self.datamodule, job_type=self.subcommand,
                                ckpt_path=evaluated)

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        config = self._get(self.config_init, "trainer", default={})
        callbacks = _as_list(config.get("callbacks"))
        present = callbacks + _as_list(self.trainer_defaults.get("callbacks"))
        if config.get("enable_progress_bar") is not False and not config.get("barebones") \
                and not any(isinstance(cb, ProgressBar) for cb in present):
            callbacks.append(CompactProgressBar())
        if self.subcommand == "predict" and not any(isinstance(cb, BasePredictionWriter) for cb in present):
            callbacks.append(PredictionWriter())
        return super().instantiate_trainer(**kwargs, callbacks=callbacks, plugins=_with_atomic_checkpoints(config))

    def _run_subcommand(self, subcommand: str) -> None:
        """Run ``subcommand``; a predict that fails removes its run folder when that holds only the config."""
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            if subcommand == "predict":
                remove_config_only_run_dir(run_dir(self.trainer))
            raise

    def after_fit(self) -> None:
        if self.config[self.subcommand].get("test_after_fit"):
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=weights_to_test(self.trainer))
        run_summary(self.trainer, "fit")

    def after_test(self) -> None:
        run_summary(self.trainer, "test")

    def after_predict(self) -> None:
        writers = [cb for cb in self.trainer.callbacks if isinstance(cb, PredictionWriter) and cb.last_path]
        if writers:
            print(f"crl predict: wrote {writers[0].last_path}", flush=True)
        else:
            run_summary(self.trainer, "predict")


def _with_atomic_checkpoints(config: dict[str, Any]) -> list[Any]:
    """The trainer's ``plugins`` with an `AtomicCheckpointIO` added, unless the config chose a ``CheckpointIO``.

    Nothing is added when ``trainer.plugins`` holds a ``CheckpointIO`` (e.g. ``AsyncCheckpointIO``), the strategy
    object brings its own, or the run is on TPUs (XLA strategies need ``XLACheckpointIO``).
    """
    from lightning.pytorch.accelerators import XLAAccelerator
    from lightning.pytorch.plugins.io import CheckpointIO

    plugins = _as_list(config.get("plugins"))
    strategy, accelerator = config.get("strategy"), config.get("accelerator")
    xla = accelerator in ("tpu", "xla") or isinstance(accelerator, XLAAccelerator) \
        or accelerator in (None, "auto") and XLAAccelerator.is_available()
    if xla or any(isinstance(p, CheckpointIO) for p in plugins) or getattr(strategy, "_checkpoint_io", None):
        return plugins
    return [*plugins, AtomicCheckpointIO()]


class _Resolved(Exception):  # noqa: N818 -- not an error: how `resolve_config` stops the CLI before it builds
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__("resolved")
        self.config = config


class _ResolvingCLI(CRLCLI):
    """`CRLCLI` that parses and checks a command line, then stops with its resolved config (`resolve_config`)."""

    def _set_seed(self) -> None:  # nothing runs: leave the global seed alone
        pass

    def before_instantiate_classes(self) -> None:
        super().before_instantiate_classes()
        import yaml

        parser = self._parser(self.subcommand)
        raise _Resolved(yaml.safe_load(parser.dump(self.config[self.subcommand], skip_none=False)))


def resolve_config(args: Sequence[str]) -> dict[str, Any]:
    """The resolved config of ``crl ARGS`` (as the run's ``config.yaml`` will hold it), with nothing built or run.

    ``crl study`` and ``crl cv`` use it to know a run's experiment (`crl_lightning.runs.experiment_settings`)
    before deciding whether a finished run folder can be reused.

    Args:
        args: the command line without the program name, starting with the subcommand (``["fit", ...]``).

    Raises:
        argparse.ArgumentError, ConfigError: as `build_cli`.
    """
    try:
        _new_cli(_ResolvingCLI, args, None)
    except _Resolved as resolved:
        return resolved.config
    raise RuntimeError("resolve_config: the CLI ran instead of stopping after parsing")  # pragma: no cover


def _as_list(value: Any) -> list[Any]:
    return [] if value is None else list(value) if isinstance(value, list | tuple) else [value]


def run_summary(trainer: L.Trainer, command: str) -> str | None:
    """Print, on global rank 0, one line naming the run folder (`run_dir`) and what it holds; return it.

    Nothing is printed under ``fast_dev_run`` (nothing is written then) or when the folder does not exist.

    Args:
        trainer: the trainer of the run.
        command: the subcommand, for the line's prefix (``crl fit: ...``).

    Returns:
        The line, e.g. ``crl fit: results in runs/x/lightning_logs/version_0/: checkpoints/ config.yaml ...``
        (sub-folders end with ``/``), or ``None`` when nothing was printed.
    """
    folder = run_dir(trainer)
    if not trainer.is_global_zero or trainer.fast_dev_run or not folder.is_dir():
        return None
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if not p.name.startswith("."))
    line = f"crl {command}: results in {folder}/: {' '.join(names)}"
    print(line, flush=True)
    return line


def resolve_ckpt_path(ckpt_path: str | None, root: str | Path) -> str | None:
    """``--ckpt_path`` as ``crl`` passes it to Lightning: ``"last"`` is the newest ``last.ckpt`` under ``root``.

    Every ``crl fit`` logs into a new folder (``lightning_logs/version_N``), where Lightning's own ``"last"``
    looks, so it would find nothing and start afresh. Here ``"last"`` is `newest_last_checkpoint` of ``root``
    (``trainer.default_root_dir``), over all run folders: with ``ModelCheckpoint(save_last=True)`` (the example
    configs), the end of the last epoch that a killed or finished run completed, from which the resumed run
    repeats the uninterrupted one bit for bit (see `crl_lightning.callbacks.RandomState`). Mid-epoch checkpoints
    (Lightning's ``OnExceptionCheckpoint``, SLURM's ``hpc_ckpt_N.ckpt``) are not named ``last.ckpt`` and are not
    taken; a ``fast_dev_run`` leaves a ``last.ckpt`` too (Lightning 2.6 writes it when training ends), so smoke
    runs are best given another ``default_root_dir``.

    Args:
        ckpt_path: the ``--ckpt_path`` value: ``None``, a path, or one of Lightning's ``"best"``, ``"last"``, ...
        root: the folder searched, ``trainer.default_root_dir``.

    Returns:
        The path of that ``last.ckpt`` for ``"last"``; any other value unchanged.

    Raises:
        FileNotFoundError: ``ckpt_path`` is ``"last"`` and there is no ``last.ckpt`` under ``root``.
    """
    if ckpt_path != "last":
        return ckpt_path
    last = newest_last_checkpoint(root)
    if last is None:
        raise FileNotFoundError(
            f"ckpt_path: expected a last.ckpt under trainer.default_root_dir ({root}) to resume from, found none; "
            "a ModelCheckpoint with save_last: true writes one at every epoch end (start without --ckpt_path)"
        )
    return str(last)


def weights_to_test(trainer: L.Trainer) -> str | None:
    """The ``ckpt_path`` for testing right after ``trainer.fit``: ``"best"``, or ``None`` for the in-memory weights.

    ``"best"`` is ModelCheckpoint's ``best_model_path`` (the last epoch's when nothing is monitored);
    ``None`` (the weights in memory) when no checkpoint was saved. With a `WeightAveraging` callback (EMA,
    SWA), whose ``on_load_checkpoint`` would put the *current* weights back while the fit's average model
    still exists, the checkpoint's ``state_dict`` (the averaged weights) is loaded into the model here and
    ``None`` returned, so the test sees the averaged weights.
    """
    checkpoint = trainer.checkpoint_callback
    if checkpoint is None or not checkpoint.best_model_path:
        return None
    if not any(isinstance(cb, WeightAveraging) for cb in trainer.callbacks):
        return "best"
    model = trainer.lightning_module
    state = torch.load(checkpoint.best_model_path, map_location=model.device, weights_only=False)["state_dict"]
    model.load_state_dict(state)
    return None


#: Commands of ``crl`` that are not LightningCLI subcommands: name -> "module:function(args)".
EXTRA_COMMANDS = {
    "cv": "crl_lightning.cv:main",
    "compare": "crl_lightning.compare:main",
    "study": "crl_lightning.study:main",
}


class _HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help formatter; a docstring's "see above" points to the class docstring.

    ``--data.help CLASS`` shows only the first line of the class docstring above the options, so an argument
    documented as "(see above)" there would point to nothing.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        return super()._get_help_string(action).replace("see above", "see the class docstring")


class _Parser(LightningArgumentParser):
    """LightningArgumentParser with `_HelpFormatter` by default (``--*.help`` makes a ``type(parser)()``)."""

    def __init__(self, *args: Any, formatter_class: type = _HelpFormatter, **kwargs: Any) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)


def build_cli(args: Sequence[str] | None = None, trainer_defaults: dict[str, Any] | None = None) -> CRLCLI:
    """Parse ``args`` (default ``sys.argv[1:]``) and run the LightningCLI subcommand; return the CLI.

    Args:
        args: the command line without the program name, e.g. ``["fit", "--config", "c.yaml"]``.
        trainer_defaults: LightningCLI's ``trainer_defaults``: Trainer defaults under the config's values,
            and ``callbacks`` added to every trainer (e.g. ``crl study``'s pairing fingerprint).

    Raises:
        argparse.ArgumentError: a bad command-line argument or config value (jsonargparse's message;
            `crl_lightning.console.parse_error_message` makes it one line).
        ConfigError: a configuration `CRLCLI` refuses (see there).
        SystemExit: after ``--help`` / ``--print_config``.
    """
    return _new_cli(CRLCLI, args, trainer_defaults)


def _new_cli(cli_class: type[CRLCLI], args: Sequence[str] | None, trainer_defaults: dict[str, Any] | None) -> CRLCLI:
    return cli_class(
        ImageClassifier,
        ImageDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=list(args) if args is not None else None,
        parser_class=_Parser,
        parser_kwargs={"exit_on_error": False, "allow_abbrev": False,
                       "description": "Train and evaluate image classifiers with the Competing Ratio Loss. "
                       "Also: `crl study --help` (criteria x seeds, paired tests), `crl cv --help` (k-fold "
                       "cross-validation) and `crl compare --help` (results table). Errors print as one line; "
                       "`crl --traceback ...` (or CRL_TRACEBACK=1) shows the full trace."},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        trainer_defaults=trainer_defaults,
    )


def main(args: Sequence[str] | None = None) -> None:
    """``crl fit|validate|test|predict`` (LightningCLI) or one of `EXTRA_COMMANDS`; ``args`` default ``sys.argv[1:]``.

    Every ``--config`` file is read as YAML first (`check_config_files`), for every command.

    Raises:
        FileNotFoundError: dataset files are missing (the message says where it looked and how to get them).
        argparse.ArgumentError, ConfigError: see `build_cli` and `check_config_files`.
        SystemExit: bad arguments of an extra command, or after ``--help`` / ``--print_config``.
    """
    import importlib
    import sys

    argv = list(sys.argv[1:] if args is None else args)
    check_config_files(argv)
    if argv and argv[0] in EXTRA_COMMANDS:
        module, func = EXTRA_COMMANDS[argv[0]].split(":")
        getattr(importlib.import_module(module), func)(argv[1:])
        return
    build_cli(args)  # None lets LightningCLI read sys.argv itself


def console_main() -> None:
    """The ``crl`` console script: `main` with a quiet console and errors printed as one line.

    * An error ends the command with exit code 1 and one line ``crl: error: <message>`` on stderr
      (`crl_lightning.console.error_message`); ``--traceback`` anywhere on the command line, or the environment
      variable ``CRL_TRACEBACK=1``, shows the full traceback instead.
    * Lightning's tips and known-harmless warnings are hidden (`crl_lightning.console.quiet_console`).
    * Ctrl-C ends the command with exit code 130 and one line saying how to resume it
      (`crl_lightning.console.interrupted_message`), also when Lightning has caught it and shut down.
    * This package's INFO log lines (e.g. dataset sizes) go to stderr, as Lightning shows its own.
    """
    import logging
    import os
    import sys

    from crl_lightning.console import TRACEBACK_ENV, error_message, interrupted_message, quiet_console

    traceback = "--traceback" in sys.argv[1:] or os.environ.get(TRACEBACK_ENV, "0") not in ("", "0")
    sys.argv = [a for a in sys.argv if a != "--traceback"]
    package_log = logging.getLogger("crl_lightning")
    if not package_log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        package_log.addHandler(handler)
        package_log.setLevel(logging.INFO)
    quiet_console()
    try:
        main()
    except (KeyboardInterrupt, SystemExit) as end:
        # Lightning catches Ctrl-C in the trainer, shuts down and exits 1 inside its `except KeyboardInterrupt`
        if isinstance(end, SystemExit) and not isinstance(end.__context__, KeyboardInterrupt) or traceback:
            raise
        print(f"crl: {interrupted_message(sys.argv[1:])}", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as err:
        if traceback:
            raise
        print(f"crl: error: {error_message(err)}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":  # pragma: no cover
    console_main()
