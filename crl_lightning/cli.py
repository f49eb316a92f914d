"""The ``crl`` command: LightningCLI over `ImageClassifier` and any `ImageDataModule`.

``crl fit|validate|test|predict --config CONFIG.yaml [--key value ...]``; configs use LightningCLI's
``class_path``/``init_args`` form for the model, the data, the criterion, the optimizer and the scheduler.
The DataModule's ``num_classes`` and ``in_chans`` are linked into the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from crl_lightning.callbacks import configure_wandb_loggers
from crl_lightning.classifier import ImageClassifier
from crl_lightning.data.base import ImageDataModule
from crl_lightning.files import newest_last_checkpoint

__all__ = ["CRLCLI", "EXTRA_COMMANDS", "build_cli", "console_main", "main", "resolve_ckpt_path", "weights_to_test"]


class CRLCLI(LightningCLI):
    """LightningCLI with data -> model links, ``--test_after_fit`` and ``--ckpt_path last`` (`resolve_ckpt_path`)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.in_chans", "model.init_args.in_chans", apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit", type=bool, default=False,
            help="After `fit`, run `test` on the best checkpoint (the last weights when none was saved).",
        )

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        configure_wandb_loggers(self.trainer, self.model, self.datamodule, job_type=self.subcommand)
        config = self.config_init[self.subcommand]
        config["ckpt_path"] = resolve_ckpt_path(config.get("ckpt_path"), self.trainer.default_root_dir)

    def after_fit(self) -> None:
        if self.config[self.subcommand].get("test_after_fit"):
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=weights_to_test(self.trainer))


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


def build_cli(args: Sequence[str] | None = None, trainer_defaults: dict[str, Any] | None = None) -> CRLCLI:
    """Parse ``args`` (default ``sys.argv[1:]``) and run the LightningCLI subcommand; return the CLI.

    Args:
        args: the command line without the program name, e.g. ``["fit", "--config", "c.yaml"]``.
        trainer_defaults: LightningCLI's ``trainer_defaults``: Trainer defaults under the config's values,
            and ``callbacks`` added to every trainer (e.g. ``crl study``'s pairing fingerprint).
    """
    return CRLCLI(
        ImageClassifier,
        ImageDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=list(args) if args is not None else None,
        parser_kwargs={"description": "Train and evaluate image classifiers with the Competing Ratio Loss. "
                       "Also: `crl study --help` (criteria x seeds, paired tests), `crl cv --help` (k-fold "
                       "cross-validation) and `crl compare --help` (results table)."},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        trainer_defaults=trainer_defaults,
    )


def main(args: Sequence[str] | None = None) -> None:
    """``crl fit|validate|test|predict`` (LightningCLI) or one of `EXTRA_COMMANDS`; ``args`` default ``sys.argv[1:]``.

    Raises:
        FileNotFoundError: dataset files are missing (the message says where it looked and how to get them).
        SystemExit: bad command-line arguments, or after ``--help`` / ``--print_config``.
    """
    import importlib
    import sys

    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in EXTRA_COMMANDS:
        module, func = EXTRA_COMMANDS[argv[0]].split(":")
        getattr(importlib.import_module(module), func)(argv[1:])
        return
    build_cli(args)  # None lets LightningCLI read sys.argv itself


def console_main() -> None:
    """The ``crl`` console script: `main`, with missing-data errors printed as one line, not a traceback.

    Also shows this package's INFO log lines (e.g. dataset sizes) on stderr, as Lightning shows its own.
    """
    import logging
    import sys

    package_log = logging.getLogger("crl_lightning")
    if not package_log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        package_log.addHandler(handler)
        package_log.setLevel(logging.INFO)
    try:
        main()
    except FileNotFoundError as err:
        print(f"crl: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":  # pragma: no cover
    console_main()
