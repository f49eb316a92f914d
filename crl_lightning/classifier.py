"""`ImageClassifier`: backbone + injected criterion + optimizer/scheduler + top-k error metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import warnings

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from crl_lightning.losses import CompetingRatioLoss
from crl_lightning.metrics import classification_metrics
from crl_lightning.models import create_backbone

__all__ = ["ImageClassifier", "PAPER_SGD"]

#: The paper's optimizer (Sec. IV-A-2): SGD, Nesterov momentum 0.9, weight decay 1e-4, lr 0.1.
PAPER_SGD: dict[str, Any] = {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}
#: The paper's default schedule: lr divided by 10 at these fractions of ``trainer.max_epochs``.
PAPER_MILESTONE_FRACTIONS = (0.5, 0.75)


class ImageClassifier(L.LightningModule):
    """Image classifier trained with an injected criterion (default: CRL, alpha=1.5, beta=1).

    Logs ``{stage}_loss``, ``{stage}_top1_err`` and ``{stage}_top5_err`` (percent, micro-averaged,
    sample-weighted epoch values) for ``stage`` in ``train``/``val``/``test``.

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
        top_k: the k of the logged top-k errors; each must be ``<= num_classes``.
        channels_last: convert the network and the inputs to channels-last memory format.
        compile: wrap the network in ``torch.compile``.

    Raises:
        ValueError: a k in ``top_k`` outside ``[1, num_classes]``, or bad backbone arguments.

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
        top_k: Sequence[int] = (1, 5),
        channels_last: bool = False,
        compile: bool = False,
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
        self.top_k = tuple(top_k)
        self.train_metrics = classification_metrics(num_classes, self.top_k, prefix="train_")
        self.val_metrics = self.train_metrics.clone(prefix="val_")
        self.test_metrics = self.train_metrics.clone(prefix="test_")
        self.criterion = criterion if criterion is not None else CompetingRatioLoss(alpha=1.5, beta=1.0)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.backbone = self.build_backbone()
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self.network = torch.compile(self.backbone) if compile else self.backbone

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
    def _shared_step(self, batch: Any, stage: str) -> Tensor:
        images, target = batch[0], batch[1]
        logits = self(images)
        loss = self.compute_loss(logits, target, batch)
        n = images.shape[0]
        self.log(f"{stage}_loss", loss, on_step=stage == "train", on_epoch=True, batch_size=n, prog_bar=True,
                 sync_dist=stage != "train")
        if target.ndim == 1:
            metrics = getattr(self, f"{stage}_metrics")
            metrics.update(logits.detach(), target)
            self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=n, prog_bar=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "test")

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
