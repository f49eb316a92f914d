"""`NonFiniteGuard`: stop (or skip) a training step whose loss is NaN or infinite before the weights take it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal, cast

import lightning as L
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from typing_extensions import override

__all__ = ["LAZY_CHECK_STEPS", "NonFiniteGuard"]

log = logging.getLogger(__name__)

#: Optimizer steps between two checks where the host would otherwise not wait for the device (a GPU without
#: a GradScaler): on the CPU, and with the fp16 GradScaler (which waits for the device every step), every step.
LAZY_CHECK_STEPS = 50

#: What was non-finite, by the code a step gets (0: nothing).
_FINDINGS = {
    1: "the inputs and the logits were finite, only the loss was not (check the criterion and the targets)",
    2: "the inputs were finite but the logits were not (the weights or activations overflowed: lower the "
       "learning rate or clip the gradients)",
    3: "the inputs were non-finite (a NaN or inf in the batch: check the data and its transforms)",
}


def _float_tensors(batch: Any) -> list[Tensor]:
    """The floating-point tensors of a batch (nested tuples, lists and mappings)."""
    if isinstance(batch, Tensor):
        return [batch] if batch.is_floating_point() else []
    items = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, list | tuple) else ()
    return [t for item in items for t in _float_tensors(item)]


class NonFiniteGuard(L.Callback):
    """Stop training at a NaN or infinite training loss, naming the step and what went non-finite; or skip the step.

    Every training batch gets a code computed on its device, without waiting for it: whether the loss (as given
    to ``backward``) is non-finite and, if so, whether the batch's floating-point tensors (the inputs) or the
    outputs of the LightningModule's ``forward`` during the training step (the logits) were. The codes are read
    on the host (one wait for the device) before the optimizer step every ``check_every_n_steps`` steps and when
    training ends, gathered from all processes so that all stop or skip together, and before every checkpoint is
    saved (this process's only: a save is not always made by all processes at once). A checkpoint whose
    ``state_dict`` holds a NaN or inf is never written: the guard raises instead (e.g. when Lightning's
    ``ModelCheckpoint(save_on_exception=True)`` would overwrite ``last.ckpt`` after the error, with the
    BatchNorm statistics of a NaN batch).

    * ``action="raise"``: a `FloatingPointError` names the global step, the epoch and the batch index, and says
      whether the inputs, the logits or only the loss were non-finite. Checked every step (on the CPU, or
      under the fp16 GradScaler), it is raised before that step's optimizer step: the weights never take the
      bad gradients. Checked every N steps (a GPU without the scaler), the weights in memory may have taken up to
      N - 1 steps after it, but no checkpoint is saved after it: the last one saved stays good.
    * ``action="skip"``: the step changes nothing (its gradients are dropped, so the optimizer leaves the
      weights and its own state as they were, and the model's buffers, e.g. BatchNorm statistics, are put back)
      and training goes on. Skipped steps are counted in `skipped_steps` (kept in checkpoints), logged as
      ``train_skipped_steps`` (the count so far, at each epoch end) and warned about one by one. The step
      still counts in ``trainer.global_step``, and its loss still enters the epoch's ``train_loss``. Every step
      is checked, so on a GPU without the fp16 scaler skipping costs one wait for the device per step.

    Under ``precision="16-mixed"`` the GradScaler skips steps whose *gradients* overflow while the loss is
    finite; those are part of fp16 training, not errors, and pass (only the loss is checked).
    `crl_lightning.ImageClassifier` adds this guard (``action="raise"``) unless the trainer has one; to skip::

        trainer:
          callbacks+:
            - class_path: crl_lightning.guard.NonFiniteGuard
              init_args: {action: skip}

    Args:
        action: ``"raise"`` or ``"skip"``, see above.
        check_every_n_steps: optimizer steps between two checks with ``action="raise"``; ``None`` checks every
            step on the CPU and under the fp16 GradScaler, and every `LAZY_CHECK_STEPS` steps otherwise.

    Raises:
        ValueError: ``action`` is not ``"raise"`` or ``"skip"``, or ``check_every_n_steps < 1``.
    """

    def __init__(self, action: Literal["raise", "skip"] = "raise", check_every_n_steps: int | None = None) -> None:
        if action not in ("raise", "skip"):
            raise ValueError(f"action: expected 'raise' or 'skip', got {action!r}")
        if check_every_n_steps is not None and check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps: expected None or >= 1, got {check_every_n_steps}")
        self.action = action
        self.check_every_n_steps = check_every_n_steps
        #: Training steps skipped so far (``action="skip"``), restored from checkpoints.
        self.skipped_steps = 0
        self._every = 1
        self._pending: list[tuple[Tensor, int, int, int]] = []  # (code, global step, epoch, batch index)
        self._batch: tuple[int, Tensor] | None = None  # (batch index, inputs non-finite) of the current batch
        self._logits_bad: Tensor | None = None  # None outside a training step's forward
        self._buffers: list[Tensor] = []  # the model's buffers before the pending steps (action="skip")
        self._hook: torch.utils.hooks.RemovableHandle | None = None

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._hook = pl_module.register_forward_hook(self._on_forward)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        waits_anyway = pl_module.device.type == "cpu" or getattr(trainer.precision_plugin, "scaler", None) is not None
        self._every = self.check_every_n_steps or (1 if waits_anyway else LAZY_CHECK_STEPS)

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        inputs_bad = torch.zeros((), dtype=torch.bool, device=pl_module.device)
        for tensor in _float_tensors(batch):
            inputs_bad = inputs_bad | ~torch.isfinite(tensor).all()
        self._batch, self._logits_bad = (batch_idx, inputs_bad), torch.zeros_like(inputs_bad)
        if self.action == "skip" and not self._pending:  # the first batch since the last optimizer step
            self._buffers = [b.detach().clone() for b in pl_module.buffers()]

    def _on_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._logits_bad is not None and isinstance(output, Tensor):
            self._logits_bad = self._logits_bad | ~torch.isfinite(output.detach()).all()

    @override
    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        if self._batch is None or self._logits_bad is None:  # set and cleared together
            return
        batch_idx, inputs_bad = self._batch
        loss_bad = ~torch.isfinite(loss.detach()).all()
        code = torch.where(loss_bad, torch.where(inputs_bad, 3, torch.where(self._logits_bad, 2, 1)), 0)
        self._pending.append((code, trainer.global_step, trainer.current_epoch, batch_idx))

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batch = self._logits_bad = None  # no capture of the forward outputs outside training steps

    @override
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Optimizer) -> None:
        if self.action == "raise" and (trainer.global_step + 1) % self._every:
            return
        finding = self._check(trainer, pl_module)
        if finding is None:
            return
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.grad = None  # optimizers pass over parameters without a gradient
        with torch.no_grad():
            for buffer, saved in zip(pl_module.buffers(), self._buffers, strict=True):
                buffer.copy_(saved)
        self.skipped_steps += 1
        log.warning("NonFiniteGuard: skipped the optimizer step of %s", finding)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.action == "skip":
            pl_module.log("train_skipped_steps", float(self.skipped_steps), on_step=False, on_epoch=True)

    @override
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.action == "raise":
            self._check(trainer, pl_module, gather=False)
        tensors = {name: v for name, v in checkpoint["state_dict"].items() if v.is_floating_point() and v.numel()}
        finite = torch.stack([torch.isfinite(v).all() for v in tensors.values()]).tolist() if tensors else []
        bad = [name for name, ok in zip(tensors, finite, strict=True) if not ok]
        if bad:
            raise FloatingPointError(
                f"NonFiniteGuard: not saving a checkpoint whose state_dict holds NaN or inf values ({len(bad)} "
                f"tensors, e.g. {bad[:3]}) at global step {trainer.global_step}; the checkpoints saved before are "
                "unchanged"
            )

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.action == "raise":
            self._check(trainer, pl_module)

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule, gather: bool = True) -> str | None:
        """Read the pending codes; raise on a non-finite one, or with "skip" describe it.

        Args:
            trainer: the trainer.
            pl_module: the LightningModule (its ``all_gather``).
            gather: read the codes of all processes (a collective: every process must call it at the same
                point), or only this process's.

        Returns:
            ``None`` when every pending step was finite; else, with ``action="skip"``, the first such step.

        Raises:
            FloatingPointError: ``action="raise"`` and a pending step's loss was non-finite.
        """
        if not self._pending:
            return None
        pending, self._pending = self._pending, []
        codes = torch.stack([code for code, *_ in pending])
        gathered = cast(Tensor, pl_module.all_gather(codes)) if gather else codes
        rows = gathered.reshape(-1, len(pending)).tolist()
        found = next(((k, row) for k in range(len(pending)) for row in range(len(rows)) if rows[row][k]), None)
        if found is None:
            return None
        k, row = found
        _, step, epoch, batch_idx = pending[k]
        process = f", process {row if gather else trainer.global_rank}" if trainer.world_size > 1 else ""
        finding = f"global step {step} (epoch {epoch}, batch {batch_idx}{process}): {_FINDINGS[rows[row][k]]}"
        if self.action == "skip":
            return finding
        if trainer.global_step == step:
            taken = "training stopped before its optimizer step, so the weights did not take it"
        else:
            taken = (f"found at global step {trainer.global_step} (checked every {self._every} steps): the weights "
                     "in memory may have taken it, no checkpoint has")
        raise FloatingPointError(
            f"non-finite training loss at {finding}; {taken}. Fix the cause and resume from the last checkpoint "
            "(crl fit ... --ckpt_path last), or skip such steps: NonFiniteGuard(action='skip')"
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
