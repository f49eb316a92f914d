"""A user-project subclass of `ImageClassifier` that runs through the same ``crl`` CLI.

`ConfidencePenaltyClassifier` adds the confidence penalty of Pereyra et al. 2017 ("Regularizing
Neural Networks by Penalizing Confident Output Distributions"): ``loss = criterion - penalty * H(p)``,
with ``H(p)`` the mean entropy of the softmax. Only `compute_loss` is overridden; logging, metrics,
optimizers and checkpoints are inherited.

Run it from the repository root (the folder of this file must be importable)::

    PYTHONPATH=examples crl fit --config examples/configs/digits_crl.yaml \\
        --model subclass_classifier.ConfidencePenaltyClassifier --model.init_args.penalty 0.1
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from crl_lightning import ImageClassifier


class ConfidencePenaltyClassifier(ImageClassifier):
    """`ImageClassifier` whose loss subtracts ``penalty`` times the mean softmax entropy (nats).

    Args:
        penalty: weight of the entropy term, ``>= 0``.
        **kwargs: the `ImageClassifier` arguments (backbone, criterion, optimizer, ...).

    Raises:
        ValueError: ``penalty < 0``.
    """

    def __init__(self, penalty: float = 0.1, **kwargs: Any) -> None:
        if penalty < 0:
            raise ValueError(f"penalty: expected >= 0, got {penalty}")
        super().__init__(**kwargs)
        self.penalty = penalty

    def compute_loss(self, logits: Tensor, target: Tensor, batch: Any) -> Tensor:
        logp = torch.log_softmax(logits.float(), dim=1)
        entropy = -(logp.exp() * logp).sum(dim=1).mean()
        return super().compute_loss(logits, target, batch) - self.penalty * entropy
