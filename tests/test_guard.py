"""`NonFiniteGuard`: a non-finite training loss stops training (naming the step and the cause) or is skipped."""

from __future__ import annotations

import copy
import csv
import math
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins import MixedPrecision

from crl_lightning import ImageClassifier
from crl_lightning.data import DigitsDataModule
from crl_lightning.guard import NonFiniteGuard

STEPS_PER_EPOCH = 3


class Poison(L.Callback):
    """Make the training loss of the given global steps non-finite through ``what``, and keep the state around them.

    ``what``: ``"inputs"`` (a NaN pixel), ``"logits"`` (an inf logit out of the network) or ``"loss"`` (the
    criterion's output times NaN), or ``"target"`` (a class index out of range).
    """

    def __init__(self, what: str, steps: tuple[int, ...], rank: int | None = None) -> None:
        self.what, self.steps, self.rank = what, steps, rank  # rank: poison only that process
        self.armed = False
        self.before: dict | None = None  # model and optimizer state before / after the first poisoned step
        self.after: dict | None = None

    def setup(self, trainer, pl_module, stage):
        def poison_logits(module, args, output):
            return output.index_fill(1, torch.tensor([0]), math.inf) if self.armed and self.what == "logits" else None

        def poison_loss(module, args, output):
            return output * math.nan if self.armed and self.what == "loss" else None

        pl_module.backbone.register_forward_hook(poison_logits)
        pl_module.criterion.register_forward_hook(poison_loss)

    def _state(self, trainer, pl_module):
        return copy.deepcopy({"model": pl_module.state_dict(), "optimizer": trainer.optimizers[0].state_dict()})

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.armed = trainer.global_step in self.steps and self.rank in (None, trainer.global_rank)
        if self.armed and self.before is None:
            self.before = self._state(trainer, pl_module)
        if self.armed and self.what == "inputs":
            batch[0][1, 0, 2, 3] = math.nan
        if self.armed and self.what == "target":
            batch[1][2] = 10

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.armed and self.after is None:
            self.after = self._state(trainer, pl_module)
        self.armed = False


def _fit(tmp_path, *callbacks, model=None, epochs=2, **trainer_kwargs):
    L.seed_everything(0)
    model = model or ImageClassifier("preact_resnet20", num_classes=10, in_chans=1)
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=epochs, limit_train_batches=STEPS_PER_EPOCH,
                        limit_val_batches=1, accelerator="cpu", deterministic=True, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=list(callbacks), **trainer_kwargs)
    trainer.fit(model, DigitsDataModule(batch_size=16))
    return trainer, model


def _same(a, b) -> bool:
    """Nested dicts/lists of tensors and numbers, equal bit for bit (a NaN is never equal)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(map(_same, a, b))
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def _finite(state: dict) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize("save_on_exception", [False, True])
def test_nan_image_stops_before_the_step_and_leaves_the_last_checkpoint(tmp_path, one_thread, save_on_exception):
    model = ImageClassifier("preact_resnet20", num_classes=10, in_chans=1)
    poison = Poison("inputs", steps=(4,))
    checkpoint = ModelCheckpoint(save_last=True, save_on_exception=save_on_exception)
    with pytest.raises(FloatingPointError) as info:
        _fit(tmp_path, poison, checkpoint, model=model)
    # with save_on_exception, Lightning's exception path tries to save (overwriting last.ckpt) the model, whose
    # BatchNorm statistics took the NaN batch: refused
    error = info.value.__context__ if save_on_exception else info.value
    if save_on_exception:
        assert re.match(r"NonFiniteGuard: not saving a checkpoint whose state_dict holds NaN or inf values "
                        r"\(\d+ tensors, e.g. \['backbone\.[\w.]+\.running_mean'", str(info.value))
    assert str(error).startswith("non-finite training loss at global step 4 (epoch 1, batch 1): the inputs were "
                                 "non-finite")
    assert "training stopped before its optimizer step" in str(error)
    # the optimizer step never ran: the parameters in memory are those before the bad batch
    before = poison.before["model"]
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    (last,) = tmp_path.rglob("last.ckpt")
    saved = torch.load(last, weights_only=True)
    assert (saved["epoch"], saved["global_step"]) == (0, STEPS_PER_EPOCH) and _finite(saved["state_dict"])
    restored = ImageClassifier.load_from_checkpoint(last).eval()
    assert restored(torch.zeros(2, 1, 8, 8)).isfinite().all()


@pytest.mark.parametrize(("what", "finding"), [
    ("logits", "the inputs were finite but the logits were not"),
    ("loss", "the inputs and the logits were finite, only the loss was not"),
])
def test_the_error_says_whether_the_logits_or_only_the_loss_were_non_finite(tmp_path, one_thread, what, finding):
    with pytest.raises(FloatingPointError, match=re.escape(f"at global step 1 (epoch 0, batch 1): {finding}")):
        _fit(tmp_path, Poison(what, steps=(1,)), epochs=1, logger=False, enable_checkpointing=False)


def test_a_lazy_check_keeps_the_non_finite_weights_out_of_every_checkpoint(tmp_path, one_thread):
    """Checked every 4 steps (as on a GPU): step 4 is bad, step 5 takes it, the epoch-end save finds it."""
    model = ImageClassifier("preact_resnet20", num_classes=10, in_chans=1)
    message = re.escape("at global step 4 (epoch 1, batch 1): the inputs were non-finite") + ".*" + re.escape(
        "found at global step 6 (checked every 4 steps): the weights in memory may have taken it")
    with pytest.raises(FloatingPointError, match=message):
        _fit(tmp_path, Poison("inputs", steps=(4,)), ModelCheckpoint(save_last=True),
             NonFiniteGuard(check_every_n_steps=4), model=model)
    assert not all(bool(p.isfinite().all()) for p in model.parameters())  # steps 4 and 5 were taken
    (last,) = tmp_path.rglob("last.ckpt")
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == STEPS_PER_EPOCH and _finite(saved["state_dict"])


def test_skip_drops_the_bad_steps_counts_them_and_trains_on(tmp_path, one_thread):
    poison = Poison("inputs", steps=(1, 4))
    guard = NonFiniteGuard(action="skip")
    trainer, model = _fit(tmp_path, poison, guard)
    assert trainer.global_step == 2 * STEPS_PER_EPOCH and guard.skipped_steps == 2
    assert float(trainer.callback_metrics["train_skipped_steps"]) == 2
    (history,) = tmp_path.rglob("history.csv")
    assert [float(row["train_skipped_steps"]) for row in csv.DictReader(history.open())] == [1, 2]
    # the skipped step changed nothing: weights, BatchNorm statistics, optimizer state
    assert _same(poison.before, poison.after)
    assert _finite(model.state_dict()) and math.isfinite(float(trainer.callback_metrics["val_loss"]))
    (last,) = tmp_path.rglob("*.ckpt")
    assert torch.load(last, weights_only=True)["callbacks"]["NonFiniteGuard"] == {"skipped_steps": 2}


@pytest.mark.slow
def test_with_ddp_every_process_skips_the_step_that_one_process_found_bad(tmp_path):
    """Process 1 alone gets the NaN image; the gradients are averaged, so process 0 must skip too (gloo, 2 CPUs)."""
    trainer, model = _fit(tmp_path, Poison("inputs", steps=(1,), rank=1), NonFiniteGuard(action="skip"), epochs=1,
                          devices=2, strategy="ddp_spawn", logger=False, enable_checkpointing=False)
    assert float(trainer.callback_metrics["train_skipped_steps"]) == 1  # as process 0 counted it
    assert _finite(model.state_dict())  # process 0's weights, returned by ddp_spawn


def test_fp16_grad_scaler_skips_are_not_errors(tmp_path, one_thread):
    """A huge initial scale overflows the fp16 gradients of every step: the scaler skips them; the loss is finite."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    model = ImageClassifier("preact_resnet20", num_classes=10, in_chans=1)
    initial = copy.deepcopy(dict(model.named_parameters()))
    trainer, _ = _fit(tmp_path, epochs=1, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)], model=model,
                      logger=False, enable_checkpointing=False)
    assert trainer.global_step == STEPS_PER_EPOCH and scaler.get_scale() == 2.0 ** (40 - STEPS_PER_EPOCH)
    assert all(torch.equal(p, initial[name]) for name, p in model.named_parameters())  # every step skipped


def test_a_target_out_of_range_names_the_training_step(tmp_path, one_thread):
    message = re.escape("training step 1 (batch 1): target: expected class indices in [0, 10)")
    with pytest.raises(ValueError, match=message):
        _fit(tmp_path, Poison("target", steps=(1,)), epochs=1, logger=False, enable_checkpointing=False)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"action": "ignore"}, "action: expected 'raise' or 'skip', got 'ignore'"),
    ({"check_every_n_steps": 0}, "check_every_n_steps: expected None or >= 1, got 0"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        NonFiniteGuard(**kwargs)


def test_the_skip_overlay_replaces_the_default_guard(tmp_path, plain_argv):
    from crl_lightning.cli import build_cli

    overlay = Path(__file__).resolve().parents[1] / "examples" / "configs" / "overlays" / "skip_nonfinite.yaml"
    cli = build_cli(["fit", "--config", str(overlay.parents[1] / "digits_crl.yaml"), "--config", str(overlay),
                     "--trainer.fast_dev_run", "1", "--trainer.default_root_dir", str(tmp_path),
                     "--trainer.enable_progress_bar", "false", "--test_after_fit", "false"])
    (guard,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, NonFiniteGuard)]  # the model added none
    assert guard.action == "skip" and guard.skipped_steps == 0
