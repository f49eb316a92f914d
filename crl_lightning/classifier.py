"""`ImageClassifier`: backbone + injected criterion + optimizer/scheduler + metrics and a test report."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassConfusionMatrix

from crl_lightning.losses import CompetingRatioLoss
from crl_lightning.metrics import (
    ExpectedCalibrationError,
    NegativeLogLikelihood,
    classification_metrics,
    eval_metrics,
    per_class_accuracy,
    unpadded_sample_count,
)
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
          loss is logged per step (``train_loss_step``) and per epoch (``train_loss_epoch``).
        * ``ordinal=True``, val and test: ``{stage}_exact_acc`` and ``{stage}_one_off_acc`` (prediction
          within one class index of the target, the paper's Adience metric).
        * test only: ``test_ece`` (expected calibration error, a **fraction** in [0, 1], ``calibration_bins``
          equal-width bins), ``test_nll`` (nats per sample) and ``test_mean_class_acc`` (percent, the
          mean of the per-class accuracies). After a test, `test_results` holds the confusion matrix, the
          per-class accuracy, the reliability-diagram bins and the softmax outputs of sample images.
        * progress bar: the loss, ``train_top1_err_step`` (the current batch, not logged) and the top-1 errors.

    Under a `torch.utils.data.DistributedSampler`, the duplicates it pads onto the ends of the val/test
    shards (so every process gets as many samples) are cut from the batches before loss and metrics,
    so each sample counts once; see `crl_lightning.metrics.unpadded_sample_count`.

    The model adds a `crl_lightning.callbacks.History` callback (``history.csv``: one row of epoch metrics
    per training epoch, in the run directory), a `crl_lightning.callbacks.RandomState` callback (the random
    generators' states travel with the checkpoints, so a run resumed from an epoch-end checkpoint repeats the
    uninterrupted one), and with ``test_report=True`` a
    `crl_lightning.callbacks.TestReport` callback (unless the
    trainer already has one), which writes ``test_metrics.json``, ``confusion_matrix.csv`` and
    ``figures/*.png`` into the run directory after every test and reads as input for ``crl compare``.

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
        heatmap_samples: test images whose softmax outputs are kept for the Fig. 5 heatmap (the first
            test image of each class, at most this many); 0 keeps none.
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
        self.test_metrics = eval_metrics(num_classes, self.top_k, prefix="test_", ordinal=ordinal)
        # Eval losses as sum/count metrics: exactly sample-weighted after a multi-process sync.
        self.val_loss_mean = MeanMetric()
        self.test_loss_mean = MeanMetric()
        # Test-only extras (not updated in training or validation).
        self.test_calibration = ExpectedCalibrationError(num_classes, num_bins=calibration_bins)
        self.test_nll = NegativeLogLikelihood(num_classes)
        self.test_confusion = MulticlassConfusionMatrix(num_classes, validate_args=False)
        #: Filled at the end of each test: see `on_test_epoch_end`.
        self.test_results: dict[str, Any] = {}
        self._samples: list[tuple[int, int, Tensor]] = []  # (test position, target, probabilities)
        self._eval_positions: dict[tuple[str, int], list[int | None]] = {}  # (stage, loader) -> [limit, seen]
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
        return create_backbone(hp.backbone, hp.num_classes, hp.in_chans, hp.pretrained)

    def forward(self, images: Tensor) -> Tensor:
        """Logits (N, C) for images (N, in_chans, H, W)."""
        if self.hparams.channels_last:
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
    def _shared_step(self, batch: Any, stage: str, dataloader_idx: int = 0) -> Tensor | None:
        images, target = batch[0], batch[1]
        logits = self(images)
        n = images.shape[0]
        if stage == "train":
            loss = self.compute_loss(logits, target, batch)
            self.log("train_loss", loss, on_step=True, on_epoch=True, batch_size=n, prog_bar=True)
            if target.ndim == 1:
                self.train_metrics.update(logits.detach(), target)
                self._log_metrics(self.train_metrics, n)
                step_err = 100.0 * (logits.detach().argmax(dim=1) != target).float().mean()
                self.log("train_top1_err_step", step_err, on_step=True, on_epoch=False, prog_bar=True, logger=False)
            return loss
        position, keep = self._unpadded_slice(stage, dataloader_idx, n)
        if keep == 0:  # only padded duplicates in this batch
            return None
        if keep < n:
            logits, target, batch = logits[:keep], target[:keep], _slice_batch(batch, keep, n)
            n = keep
        loss = self.compute_loss(logits, target, batch)
        loss_mean = getattr(self, f"{stage}_loss_mean")
        loss_mean.update(loss.detach().float(), weight=n)
        self.log(f"{stage}_loss", loss_mean, on_step=False, on_epoch=True, prog_bar=True)
        if target.ndim == 1:
            logits = logits.detach()
            metrics = getattr(self, f"{stage}_metrics")
            metrics.update(logits, target)
            self._log_metrics(metrics, n)
            if stage == "test":
                self._update_test_extras(logits, target, position if dataloader_idx == 0 else None)
        return loss

    def _log_metrics(self, metrics: Any, n: int) -> None:
        for name, metric in metrics.items(keep_base=False, copy_state=False):
            self.log(name, metric, on_step=False, on_epoch=True, batch_size=n, prog_bar=name.endswith("top1_err"))

    def _unpadded_slice(self, stage: str, dataloader_idx: int, n: int) -> tuple[int, int]:
        """(position of this batch in the process's shard, how many of its ``n`` samples are not padding)."""
        key = (stage, dataloader_idx)
        if key not in self._eval_positions:
            limit = None
            if self._trainer is not None:
                loaders = self.trainer.val_dataloaders if stage == "val" else self.trainer.test_dataloaders
                if isinstance(loaders, dict):
                    loaders = list(loaders.values())
                if isinstance(loaders, list | tuple):
                    loaders = loaders[dataloader_idx] if dataloader_idx < len(loaders) else None
                limit = unpadded_sample_count(loaders) if loaders is not None else None
            self._eval_positions[key] = [limit, 0]
        limit, seen = self._eval_positions[key]
        self._eval_positions[key][1] = seen + n
        return seen, n if limit is None else max(0, min(n, limit - seen))

    def _update_test_extras(self, logits: Tensor, target: Tensor, position: int | None) -> None:
        self.test_calibration.update(logits, target)
        self.test_nll.update(logits, target)
        self.test_confusion.update(logits, target)
        limit = min(self.hparams.heatmap_samples, self.hparams.num_classes)
        if position is None or len(self._samples) >= limit:
            return
        seen = {t for _, t, _ in self._samples}
        probs = torch.softmax(logits.float(), dim=1).cpu()
        for i, t in enumerate(target.tolist()):
            if t not in seen and len(self._samples) < limit:
                seen.add(t)
                self._samples.append((position + i, t, probs[i]))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor | None:
        return self._shared_step(batch, "val", dataloader_idx)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor | None:
        return self._shared_step(batch, "test", dataloader_idx)

    def on_validation_epoch_start(self) -> None:
        self._eval_positions = {k: v for k, v in self._eval_positions.items() if k[0] != "val"}

    def on_test_epoch_start(self) -> None:
        self._eval_positions = {k: v for k, v in self._eval_positions.items() if k[0] != "test"}
        self._samples = []
        self.test_results = {}
        for metric in (self.test_calibration, self.test_nll, self.test_confusion):
            metric.reset()

    def on_test_epoch_end(self) -> None:
        """Log ``test_ece``, ``test_nll``, ``test_mean_class_acc`` and fill `test_results`.

        `test_results` (all on the CPU) after a test with integer targets:
            * ``confusion_matrix``: (C, C) int64, rows = true class, columns = predicted class;
            * ``per_class_acc``: (C,) float64 percent, ``nan`` for a class absent from the test set;
            * ``calibration``: the `ExpectedCalibrationError.bins` dict plus ``ece`` (fraction);
            * ``samples``: ``index`` (K,) int64 position in the test set (of process 0), ``target`` (K,)
              int64 and ``probs`` (K, C) float32 softmax outputs, for the first test image of each class.
        """
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if int(self.test_nll.total) == 0 and not distributed:
            return  # no test batch with integer targets
        confusion = self.test_confusion.compute().cpu()
        per_class = per_class_accuracy(confusion)
        ece = self.test_calibration.compute()
        nll = self.test_nll.compute()
        mean_class_acc = per_class.nanmean()
        self.log("test_ece", ece.float(), sync_dist=True)
        self.log("test_nll", nll.float(), sync_dist=True)
        self.log("test_mean_class_acc", mean_class_acc.float().to(self.device), sync_dist=True)
        samples = sorted(self._samples, key=lambda s: s[1])
        self.test_results = {
            "confusion_matrix": confusion,
            "per_class_acc": per_class,
            "calibration": {**self.test_calibration.bins(), "ece": float(ece)},
            "samples": {
                "index": torch.tensor([s[0] for s in samples], dtype=torch.long),
                "target": torch.tensor([s[1] for s in samples], dtype=torch.long),
                "probs": torch.stack([s[2] for s in samples]) if samples
                else torch.empty(0, self.hparams.num_classes),
            },
        }

    def configure_callbacks(self) -> list[L.Callback]:
        """`History`, `RandomState`, and `TestReport` if ``test_report`` (`crl_lightning.callbacks`), unless present."""
        from crl_lightning.callbacks import History, RandomState, TestReport

        wanted = [History, RandomState] + ([TestReport] if self.hparams.get("test_report", True) else [])
        existing = self._trainer.callbacks if self._trainer is not None else []
        return [cls() for cls in wanted if not any(isinstance(cb, cls) for cb in existing)]

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Softmax probabilities (N, C), float32."""
        images = batch[0] if isinstance(batch, list | tuple) else batch
        return torch.softmax(self(images).float(), dim=1)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["criterion_repr"] = repr(self.criterion)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("criterion_repr")
        if saved is not None and saved != repr(self.criterion):
            raise ValueError(
                f"criterion: the checkpoint was trained with {saved}, but this model has {self.criterion!r}; "
                "pass the same criterion=... to load_from_checkpoint"
            )

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
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


def _slice_batch(batch: Any, keep: int, n: int) -> Any:
    """The first ``keep`` samples of every (n, ...) tensor of a list/tuple batch; other items unchanged."""
    if not isinstance(batch, list | tuple):
        return batch
    items = [b[:keep] if isinstance(b, Tensor) and b.ndim > 0 and b.shape[0] == n else b for b in batch]
    return type(batch)(items) if isinstance(batch, list) else tuple(items)
