"""Callbacks: the per-epoch history, the test report (``test_metrics.json`` + figures), predictions, exact resume.

One module per callback; `ImageClassifier` adds `History`, `RandomState` and `TestReport` itself. Run identity
and the run files' names live in `crl_lightning.runs`, W&B naming in `crl_lightning.wandb_naming`.
"""

from crl_lightning.callbacks.history import History
from crl_lightning.callbacks.prediction_writer import PredictionWriter
from crl_lightning.callbacks.progress_bar import CompactProgressBar
from crl_lightning.callbacks.random_state import RandomState
from crl_lightning.callbacks.test_report import CONFUSION_CORNER, TestReport

__all__ = ["CONFUSION_CORNER", "CompactProgressBar", "History", "PredictionWriter", "RandomState", "TestReport"]
