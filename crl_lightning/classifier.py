"""`ImageClassifier`: backbone + injected criterion + optimizer/scheduler + the metrics it logs."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities.types import LRSchedulerTypeUnion, OptimizerLRSchedulerConfig
from torch import Tensor, nn
from torchmetrics import MeanMetric
from typing_extensions import override

from crl_lightning.calibration import fit_temperature
from crl_lightning.losses import CompetingRatioLoss
from crl_lightning.metrics import PaddingTrimmer, classification_metrics, eval_metrics, temperature_scaled_metrics
from crl_lightning.models import create_backbone

__all__ = ["ImageClassifier", "PAPER_SGD"]

#: The paper's optimizer (Sec. IV-A-2): SGD, Nesterov momentum 0.9, weight decay 1e-4, lr 0.1.
PAPER_SGD: dict[str, Any] = {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}
#: The paper's default schedule: lr divided by 10 at these fractions of ``trainer.max_epochs``.
PAPER_MILESTONE_FRACTIONS = (0.5, 0.75)


class ImageClassifier(L.LightningModule):
    """Image classifier trained with an injected criterion (default: CRL, alpha=1.5, beta=1).

    Logged metrics (epoch values are sample-weighted; ``_err``/``_acc`` are percent):
        * every stage: ``{stage}_loss`` and ``{stage}_top{k}_err`` for each k in ``top_k``. The training
          loss is logged per epoch (``train_loss``) and per step (``train_loss_step``).
        * ``ordinal=True``, val and test: ``{stage}_exact_acc`` and ``{stage}_one_off_acc`` (prediction
          within one class index of the target, the paper's Adience metric).
        * test only: ``test_ece`` (expected calibration error, a **fraction** in [0, 1], ``calibration_bins``
          equal-width bins), ``test_nll`` (nats per sample) and ``test_mean_class_acc`` (percent, the
          mean of the per-class accuracies), all in the ``test_metrics`` collection.
        * test only, after temperature scaling (`temperature`): ``test_nll_ts`` (nats) and ``test_ece_ts``
          (fraction) of ``softmax(logits / T)``; not logged when no temperature was fitted.
        * progress bar: only ``train_loss_step``, ``train_top1_err_step`` (this batch, not logged), val/test top-1.

    The duplicates a `torch.utils.data.DistributedSampler` pads onto the ends of the val/test shards are cut
    from the batches (`crl_lightning.metrics.PaddingTrimmer`), so each sample counts once.

    Callbacks it adds, unless the trainer has one: `crl_lightning.guard.NonFiniteGuard` (a NaN or infinite
    training loss stops training with an error naming the step), `crl_lightning.callbacks.History`
    (``history.csv``), `crl_lightning.callbacks.RandomState` (the random generators' states travel with the
    checkpoints, so a run resumed from an epoch-end checkpoint repeats the uninterrupted one) and, with
    ``test_report``, `crl_lightning.callbacks.TestReport`, fed by what `test_step` returns: it writes
    ``test_metrics.json`` (read by ``crl compare``), ``confusion_matrix.csv`` and ``figures/*.png`` into the
    run directory after every test, and keeps that data in Python as ``TestReport.results``.

    Temperature scaling (Guo et al., 2017; `crl_lightning.calibration.fit_temperature`): at the start of every
    test, with the weights being tested, the model runs over the DataModule's validation loader and fits one
    temperature T on those logits (`on_test_start`), kept in `temperature` with a `temperature_note`
    (``TestReport`` records both). It is skipped (``temperature`` ``None``, the note says why) when the
    DataModule does not say that its validation split is held out from the test split (``validation_held_out``
    of `crl_lightning.data.ImageDataModule`; false with ``val_split=0`` and no val split of its own, where
    validation runs on the test split), when there is no DataModule, under ``fast_dev_run``, or when the
    validation split is empty or has soft targets. T is never fitted on the test split. Under DDP every
    process runs the whole validation split (the loader is the DataModule's, without a distributed sampler)
    and all take process 0's T.

    A ``ValueError`` of the criterion during training (e.g. a class index out of range, checked on the CPU)
    names the step.

    Extension points (override one, not ``training_step``):
        * `build_backbone` -- how the network (and its head) is built;
        * `compute_loss` -- the loss from logits, target and the batch (add a regulariser here);
        * `forward` -- the logits from images.

    Args:
        backbone: name for `crl_lightning.models.create_backbone` (bare, ``timm:``, ``torchvision:``).
        num_classes: number of classes C (linked from the DataModule by the CLI).
        in_chans: input channels (linked from the DataModule by the CLI).
        pretrained: ``False``, ``True`` (timm local cache) or a local weights path.
        criterion: loss module called as ``criterion(logits, target)``; ``None`` gives
            ``CompetingRatioLoss(alpha=1.5, beta=1.0)`` (paper Eq. 16 defaults).
        optimizer: callable ``params -> Optimizer``; ``None`` gives `PAPER_SGD`.
        lr_scheduler: callable ``optimizer -> LRScheduler`` stepped once per epoch; ``None`` divides
            the lr by 10 at 50 % and 75 % of ``trainer.max_epochs`` (the paper's CIFAR/SVHN/CUB schedule).
        top_k: the k of the logged top-k errors; each must be ``<= num_classes``. ``None``: (1, 5), or
            (1,) when there are fewer than 5 classes.
        channels_last: convert the network and the inputs to channels-last memory format.
        compile: wrap the network in ``torch.compile``.
        ordinal: the classes are ordered (Adience age groups): also log exact and one-off accuracy.
        calibration_bins: number of confidence bins of ``test_ece`` and the reliability diagram.
        heatmap_samples: test images whose softmax outputs `TestReport` keeps for the Fig. 5 heatmap (the
            first test image of each class, at most this many); 0 keeps none.
        test_report: add a `crl_lightning.callbacks.TestReport` callback (metrics file and figures).

    Raises:
        TypeError: ``criterion`` is not an ``nn.Module`` (e.g. a registry name: use `create_criterion`).
        ValueError: ``num_classes < 1``, a k in ``top_k`` outside ``[1, num_classes]``, ``calibration_bins < 1``,
            ``heatmap_samples < 0``, or bad backbone arguments.

    Example:
        >>> model = ImageClassifier("preact_resnet20", num_classes=10)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    #: What `forward` runs: the backbone, compiled with ``compile`` (not a registered submodule; see __init__).
    network: Callable[[Tensor], Tensor]

    def __init__(
        self,
        backbone: str = "preact_resnet20",
        num_classes: int = 10,
        in_chans: int = 3,
        pretrained: bool | str = False,
        criterion: nn.Module | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        top_k: Sequence[int] | None = None,
        channels_last: bool = False,
        compile: bool = False,
        ordinal: bool = False,
        calibration_bins: int = 15,
        heatmap_samples: int = 10,
        test_report: bool = True,
    ) -> None:
        super().__init__()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`.*")
            self.save_hyperparameters()
        # Under LightningCLI the injected objects arrive here as class_path/init_args dicts, which the
        # checkpoint keeps so `load_from_checkpoint` rebuilds them; plain-Python objects are not kept.
        for key in ("criterion", "optimizer", "lr_scheduler"):
            if not isinstance(self.hparams.get(key), dict | None):
                del self.hparams[key]
        if heatmap_samples < 0:
            raise ValueError(f"heatmap_samples: expected >= 0, got {heatmap_samples}")
        if num_classes < 1:
            raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
        if criterion is not None and not isinstance(criterion, nn.Module):
            raise TypeError(
                f"criterion: expected an nn.Module called as criterion(logits, target), e.g. CompetingRatioLoss() "
                f"or crl_lightning.losses.create_criterion('crl'), got {type(criterion).__name__} {criterion!r}"
            )
        self.top_k = tuple(top_k) if top_k is not None else ((1, 5) if num_classes >= 5 else (1,))
        # validate_args=False: torchmetrics' target-range check costs a device-to-host sync per batch; the
        # criterion already rejects out-of-range targets.
        self.train_metrics = classification_metrics(num_classes, self.top_k, prefix="train_", validate_args=False)
        self.val_metrics = eval_metrics(num_classes, self.top_k, prefix="val_", ordinal=ordinal)
        self.test_metrics = eval_metrics(num_classes, self.top_k, "test_", ordinal, calibration_bins=calibration_bins)
        self.test_scaled_metrics = temperature_scaled_metrics(num_classes, calibration_bins, prefix="test_")
        #: The temperature fitted at the start of the last test (`on_test_start`), or ``None``.
        self.temperature: float | None = None
        #: How `temperature` was obtained, or why it was not fitted (``None`` before any test).
        self.temperature_note: str | None = None
        # Eval losses as sum/count metrics: exactly sample-weighted after a multi-process sync.
        self.val_loss_mean = MeanMetric()
        self.test_loss_mean = MeanMetric()
        self._trim_padding = PaddingTrimmer()
        self.criterion = criterion if criterion is not None else CompetingRatioLoss(alpha=1.5, beta=1.0)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.backbone = self.build_backbone()
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        # Not a registered submodule: the checkpoint holds the weights once, under ``backbone.``, whether
        # or not the model was compiled, so a checkpoint loads with either ``compile`` setting.
        self.__dict__["network"] = torch.compile(self.backbone) if compile else self.backbone

    # ----- extension points -------------------------------------------------------------------
    def build_backbone(self) -> nn.Module:
        """Return the network mapping (N, in_chans, H, W) images to (N, num_classes) logits."""
        hp = self.hparams
        return create_backbone(hp["backbone"], hp["num_classes"], hp["in_chans"], hp["pretrained"])

    @override
    def forward(self, images: Tensor) -> Tensor:
        """Logits (N, C) for images (N, in_chans, H, W)."""
        if self.hparams["channels_last"]:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.network(images)

    def compute_loss(self, logits: Tensor, target: Tensor, batch: Any) -> Tensor:
        """Scalar training/evaluation loss; the default is ``criterion(logits, target)``.

        Args:
            logits: (N, C) network outputs.
            target: (N,) int64 class indices (or (N, C) soft targets).
            batch: the full batch, for losses that need more than the target.
        """
        return self.criterion(logits, target)

    # ----- steps ------------------------------------------------------------------------------
    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, target = batch[0], batch[1]
        logits = self(images)
        n = images.shape[0]
        try:
            loss = self.compute_loss(logits, target, batch)
        except ValueError as err:  # e.g. a class index out of range: say where
            raise ValueError(f"training step {self.global_step} (batch {batch_idx}): {err}") from err
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=n)
        self.log("train_loss_step", loss, on_step=True, on_epoch=False, batch_size=n, prog_bar=True)
        if target.ndim == 1:
            self.train_metrics.update(logits.detach(), target)
            self._log_metrics(self.train_metrics, n)
            step_err = 100.0 * (logits.detach().argmax(dim=1) != target).float().mean()
            self.log("train_top1_err_step", step_err, on_step=True, on_epoch=False, prog_bar=True, logger=False)
        return loss

    def _eval_step(self, batch: Any, batch_idx: int, stage: str, dataloader_idx: int) -> dict[str, Any] | None:
        loaders = getattr(self._trainer, f"{stage}_dataloaders", None)
        position, batch = self._trim_padding(batch, batch_idx, loaders, dataloader_idx)
        if batch is None:  # only padded duplicates in this batch
            return None
        images, target = batch[0], batch[1]
        logits = self(images)
        n = images.shape[0]
        loss = self.compute_loss(logits, target, batch)
        loss_mean = getattr(self, f"{stage}_loss_mean")
        loss_mean.update(loss.detach().float(), weight=n)
        self.log(f"{stage}_loss", loss_mean, on_step=False, on_epoch=True)
        logits = logits.detach()
        if target.ndim == 1:
            metrics = getattr(self, f"{stage}_metrics")
            metrics.update(logits, target)
            self._log_metrics(metrics, n)
            if stage == "test" and self.temperature is not None:
                self.test_scaled_metrics.update(logits.float() / self.temperature, target)
                self._log_metrics(self.test_scaled_metrics, n)
        return {"loss": loss, "logits": logits, "target": target, "position": position}

    def _log_metrics(self, metrics: Any, n: int) -> None:
        for name, metric in metrics.items(keep_base=False, copy_state=False):
            bar = name.endswith("top1_err") and not name.startswith("train_")  # the batch's error is on the bar
            self.log(name, metric, on_step=False, on_epoch=True, batch_size=n, prog_bar=bar)

    @override
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any] | None:
        """Log the validation loss and metrics of a batch; return what `test_step` returns."""
        return self._eval_step(batch, batch_idx, "val", dataloader_idx)

    @override
    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any] | None:
        """Log the test loss and metrics of a batch, and return its samples for callbacks (`TestReport`).

        Returns:
            ``None`` when the batch holds only DistributedSampler padding; else, for its N unpadded samples:
            ``loss`` (scalar), ``logits`` (N, C) detached, ``target`` (N,) int64 class indices (or (N, C)
            soft targets) and ``position`` (int, the batch's position in this process's test shard: the
            number of samples of this dataloader before it).
        """
        return self._eval_step(batch, batch_idx, "test", dataloader_idx)

    @override
    def on_test_epoch_start(self) -> None:
        # New state tensors in every process: under ddp_spawn the initial ones are shared memory (the model
        # is pickled to the processes), where the confusion matrix would add up every process's counts.
        self.test_metrics.reset()
        self.test_scaled_metrics.reset()

    @override
    def on_test_start(self) -> None:
        """Fit `temperature` on the validation split with the weights being tested (see the class docstring)."""
        self.temperature, self.temperature_note = None, None
        datamodule = self.trainer.datamodule
        if self.trainer.fast_dev_run:
            self.temperature_note = "not fitted: fast_dev_run"
            return
        if datamodule is None:
            self.temperature_note = "not fitted: no DataModule, so no validation split is known"
            return
        if getattr(datamodule, "validation_held_out", None) is not True:
            self.temperature_note = ("not fitted: no validation split held out from the test split (validation "
                                     "runs on the test split, or the DataModule does not say validation_held_out)")
            return
        validation = self._validation_logits(datamodule)
        if validation is None:
            self.temperature_note = "not fitted: the validation split has no sample with a class-index target"
            return
        logits, target = validation
        temperature = fit_temperature(logits, target) if self.trainer.is_global_zero else 0.0
        self.temperature = float(self.trainer.strategy.broadcast(temperature, src=0))
        self.temperature_note = f"fitted on the {len(target)} validation samples (NLL, Guo et al. 2017)"

    def _validation_logits(self, datamodule: Any) -> tuple[Tensor, Tensor] | None:
        """(N, C) float32 logits and (N,) targets of the whole validation split (eval mode, this device), or None."""
        if "val" not in getattr(datamodule, "datasets", {"val": None}):
            datamodule.setup("validate")  # a test of a checkpoint set up only the test split
        was_training = self.training
        self.eval()
        logits, targets = [], []
        with torch.no_grad(), self.trainer.precision_plugin.val_step_context():
            for batch in datamodule.val_dataloader():
                batch = self.trainer.strategy.batch_to_device(batch)
                if batch[1].ndim == 1:
                    logits.append(self(batch[0]).float())
                    targets.append(batch[1])
        self.train(was_training)
        return (torch.cat(logits), torch.cat(targets)) if targets else None

    @override
    def configure_callbacks(self) -> list[L.Callback]:
        """`NonFiniteGuard`, `History`, `RandomState`, and `TestReport` if ``test_report``, unless present."""
        from crl_lightning.callbacks import History, RandomState, TestReport
        from crl_lightning.guard import NonFiniteGuard

        wanted = [NonFiniteGuard, History, RandomState] + [TestReport] * bool(self.hparams.get("test_report", True))
        existing: list[L.Callback] = getattr(self._trainer, "callbacks", []) if self._trainer is not None else []
        return [cls() for cls in wanted if not any(isinstance(cb, cls) for cb in existing)]

    @override
    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Softmax probabilities (N, C), float32."""
        images = batch[0] if isinstance(batch, list | tuple) else batch
        return torch.softmax(self(images).float(), dim=1)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["criterion_repr"] = repr(self.criterion)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("criterion_repr")
        if saved is not None and saved != repr(self.criterion):
            raise ValueError(
                f"criterion: the checkpoint was trained with {saved}, but this model has {self.criterion!r}; "
                "pass the same criterion=... to load_from_checkpoint"
            )

    @override
    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer: torch.optim.Optimizer
        scheduler: LRSchedulerTypeUnion
        if self.optimizer_factory is None:
            optimizer = torch.optim.SGD(params, **PAPER_SGD)
        else:
            optimizer = self.optimizer_factory(params)
        if self.lr_scheduler_factory is None:
            max_epochs = self.trainer.max_epochs if self._trainer is not None else None
            if max_epochs is None or max_epochs < 1:
                raise ValueError(
                    "lr_scheduler: the default schedule divides the lr at 50% and 75% of trainer.max_epochs, "
                    f"which must be set (got {max_epochs}); set trainer.max_epochs or pass model.lr_scheduler"
                )
            milestones = sorted({max(1, int(f * max_epochs)) for f in PAPER_MILESTONE_FRACTIONS})
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
        else:
            scheduler = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

