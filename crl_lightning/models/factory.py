"""`create_backbone`: one entry point for bare (paper), ``timm:`` and ``torchvision:`` networks."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from crl_lightning.models.cifar import BACKBONES, list_backbones

__all__ = ["create_backbone"]


def _load_local_weights(model: nn.Module, path: Path, name: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"pretrained: expected a weights file for {name!r} at {path}, found none")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    missing, unexpected = model.load_state_dict(state, strict=False)
    head = {k for k in missing if k.split(".")[0] in ("fc", "head", "classifier")}
    if set(missing) - head or unexpected:
        raise ValueError(
            f"pretrained: {path} does not fit {name!r}: missing {sorted(set(missing) - head)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )


def create_backbone(
    name: str, num_classes: int, in_chans: int = 3, pretrained: bool | str = False
) -> nn.Module:
    """Build a classification network returning (N, num_classes) logits.

    Names:
        * bare names from `list_backbones` (the paper's CIFAR/SVHN nets, e.g. ``cifar_resnet34``,
          ``preact_resnet164``, ``cifar_vgg16_bn``);
        * ``timm:<name>`` through ``timm.create_model`` (e.g. ``timm:resnet34``);
        * ``torchvision:<name>`` through ``torchvision.models.get_model`` (e.g. ``torchvision:resnet34``).

    Pretrained weights are never downloaded here: ``pretrained`` is either a path to a local
    ``state_dict`` file (the classifier head may differ and is then left freshly initialised) or
    ``True`` for timm's local Hugging Face cache only (``HF_HUB_OFFLINE=1`` is forced for the call).

    Args:
        name: backbone name as above.
        num_classes: number of output logits.
        in_chans: input channels (1 for the digits data, 3 for RGB).
        pretrained: ``False``, ``True`` (timm local cache) or a path to a weights file.

    Returns:
        The network, float32, in training mode.

    Raises:
        ValueError: unknown name or prefix, ``num_classes < 1``, or weights that do not fit.
        FileNotFoundError: requested pretrained weights are not on disk (the message says where it looked).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
    prefix, sep, arch = name.partition(":")
    if not sep:
        if name not in BACKBONES:
            raise ValueError(
                f"backbone: unknown name {name!r}; expected one of {list_backbones()} or a 'timm:'/'torchvision:' name"
            )
        if pretrained is True:
            raise ValueError(f"pretrained: {name!r} has no published weights; pass a path to a state_dict file")
        model = BACKBONES[name](num_classes, in_chans)
    elif prefix == "timm":
        model = _create_timm(arch, num_classes, in_chans, pretrained is True)
    elif prefix == "torchvision":
        import torchvision

        if pretrained is True:
            raise ValueError("pretrained: for torchvision models pass a path to a local weights file (no downloads)")
        if arch not in torchvision.models.list_models(torchvision.models):
            raise ValueError(f"backbone: torchvision has no classification model {arch!r}")
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
        if in_chans != 3:
            raise ValueError(f"in_chans: torchvision models take 3 input channels, got {in_chans}; use timm: names")
    else:
        raise ValueError(f"backbone: unknown prefix {prefix!r} in {name!r}; expected 'timm:' or 'torchvision:'")
    if isinstance(pretrained, str | Path) and pretrained:
        _load_local_weights(model, Path(pretrained).expanduser(), name)
    return model


def _create_timm(arch: str, num_classes: int, in_chans: int, from_cache: bool) -> nn.Module:
    import os

    import timm

    if not timm.list_models(arch):
        raise ValueError(f"backbone: timm has no model {arch!r}")
    if not from_cache:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        return timm.create_model(arch, pretrained=True, num_classes=num_classes, in_chans=in_chans)
    except Exception as err:  # noqa: BLE001 - re-raised with where we looked
        from huggingface_hub.constants import HF_HUB_CACHE

        raise FileNotFoundError(
            f"pretrained: weights for timm:{arch} are not in the local cache {HF_HUB_CACHE} "
            f"(downloads are disabled); fetch them once online or pass a file path ({err})"
        ) from err
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous
