"""W&B run names, groups and config from the run's experiment identity (`crl_lightning.runs`).

Nothing here imports ``wandb``: W&B is touched only through a `lightning.pytorch.loggers.WandbLogger`
the user configured (e.g. with ``examples/configs/wandb.yaml``).
"""

from __future__ import annotations

import os

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from crl_lightning.runs import checkpoint_run, experiment_name, resolved_config, run_identity

__all__ = ["configure_wandb_loggers"]


def configure_wandb_loggers(
    trainer: L.Trainer, model: L.LightningModule, datamodule: L.LightningDataModule | None = None,
    job_type: str | None = None, ckpt_path: str | None = None,
) -> None:
    """Name, group and tag each not-yet-started `WandbLogger` of ``trainer`` after the run's identity.

    Must run before the W&B run starts (Lightning starts it at the beginning of ``fit``/``test``, before
    any callback hook), so the ``crl`` CLI calls it right after building the trainer; in plain Python
    call it before ``trainer.fit``. Values the user set (``name``, ``group``, ``tags``, ``job_type``)
    are kept. What it sets in ``wandb.init``:

    * ``group``: the experiment's name, ``"<label> #<id>"`` (`crl_lightning.runs.experiment_name`): the seeds
      and folds of one experiment share a group, so W&B draws their mean and spread, and groups exactly as
      ``crl compare`` pools runs; the test of a checkpoint joins the group of the run that trained it;
    * ``name``: ``"<label>/seed<seed>"`` (and ``/fold<k>``); ``tags``: dataset, backbone, criterion label,
      the experiment id;
    * ``job_type``: ``job_type`` (the CLI passes its subcommand: ``fit``, ``test``, ...);
    * ``config``: the full resolved CLI config (when there is one) plus ``crl`` = `run_identity`
      (with the experiment's identifying ``settings``), so
      the W&B table can also group or filter by any config value;
    * ``anonymous``: left out when unset (Lightning passes ``None``, on which wandb >= 0.19 prints a notice);
    * ``dir``: when ``save_dir`` is WandbLogger's default ``"."``, ``trainer.default_root_dir``, so W&B's
      files (``wandb/``), the checkpoints and the test report (``<project>/<run id>/``) all go there.

    Args:
        trainer: the trainer whose loggers are configured.
        model: the LightningModule (backbone and criterion).
        datamodule: the DataModule (its class names the dataset); ``None`` reads ``trainer.datamodule``.
        job_type: W&B job type, or ``None`` to leave unset.
        ckpt_path: the checkpoint a ``test``/``validate``/``predict`` evaluates; the identity of the run that
            trained it (`crl_lightning.runs.checkpoint_run`), when it has one, names the W&B run.
    """
    loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    if not loggers:
        return
    trained = checkpoint_run(ckpt_path) if ckpt_path else None
    identity = trained or run_identity(trainer, model, datamodule)
    experiment = identity["experiment"]
    crit = identity["criterion"]["label"]
    dataset = identity["dataset"].removesuffix("DataModule") or identity["dataset"]
    group = experiment_name(experiment)
    name = experiment["label"] + "".join(f"/{key}{identity[key]}" for key in ("seed", "fold")
                                         if identity.get(key) is not None)
    config = resolved_config(trainer) or {}
    for logger in loggers:
        init = getattr(logger, "_wandb_init", None)
        if not isinstance(init, dict) or getattr(logger, "_experiment", None) is not None:
            rank_zero_warn(
                "configure_wandb_loggers: expected a WandbLogger whose run has not started, got a started run"
                " (or a WandbLogger without `_wandb_init`); its name and group are left as they are"
            )
            continue
        tags = [dataset, identity["backbone"], crit, experiment["id"]]
        defaults = {"name": name, "group": group, "tags": tags, "job_type": job_type}
        for key, value in defaults.items():
            if init.get(key) is None and value is not None:
                init[key] = value
        init["config"] = {**config, **(init.get("config") or {}), "crl": identity}
        if "anonymous" in init and init["anonymous"] is None:  # unset: wandb >= 0.19 warns on anonymous=None
            del init["anonymous"]
        if logger.save_dir == "." and os.path.abspath(trainer.default_root_dir) != os.getcwd():
            init["dir"] = logger._save_dir = os.fspath(trainer.default_root_dir)
            os.makedirs(init["dir"], exist_ok=True)
