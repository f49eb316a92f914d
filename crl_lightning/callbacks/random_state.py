"""`RandomState`: the random generators' states travel with checkpoints (exact resume)."""

from __future__ import annotations

import random
from typing import Any, cast

import lightning as L
import numpy as np
import torch
from typing_extensions import override

__all__ = ["RandomState"]


class RandomState(L.Callback):
    """Keep the random generators' states in every checkpoint and restore them when a fit resumes from one.

    The states of torch's CPU and CUDA generators, numpy's and Python's are saved with the checkpoint and put
    back when the checkpoint is loaded, before the resumed fit creates its first loader iterator (the sanity
    check that comes first runs with isolated generators). Everything random after an epoch-end checkpoint
    (the shuffling, which draws its seed from torch's generator when an epoch's loader iterator is created;
    per-image augmentation in the main process or in non-persistent workers, which are seeded from it;
    on-device crops and flips; MixUp/CutMix; dropout) then repeats, so a run resumed from ``last.ckpt`` equals
    the uninterrupted run bit for bit on a CPU with ``deterministic: true``. Not covered: persistent workers
    (their generators live on across epochs) and checkpoints saved in the middle of an epoch (the loader's
    position is not saved). `ImageClassifier` adds this callback itself.
    """

    @override
    def state_dict(self) -> dict[str, Any]:
        # tensors, ints and lists only: checkpoints load with torch.load(weights_only=True)
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        kind, keys, pos, has_gauss, gauss = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
        version, internal, gauss_next = random.getstate()
        return {"torch": torch.get_rng_state(), "cuda": cuda,
                "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
                "python": [version, list(internal), gauss_next]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available() and len(state_dict["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
        kind, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        version, internal, gauss_next = state_dict["python"]
        random.setstate((version, tuple(internal), gauss_next))
