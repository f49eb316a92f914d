"""`create_backbone`: one entry point for bare (paper), ``timm:`` and ``torchvision:`` networks.

``pretrained=True`` takes timm's / torchvision's default weights from their usual caches (the Hugging Face hub
cache, the torch hub checkpoint folder) and, when they are not there, downloads them into those caches through
timm's and torchvision's own hub code. Offline (``HF_HUB_OFFLINE=1``), or when the download fails, a missing
file fails at once with a `FileNotFoundError` that lists every place that was searched. A path given as
``pretrained`` is only ever read from disk.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from crl_lightning.models.cifar import BACKBONES, list_backbones

__all__ = ["create_backbone", "find_cached_weights", "load_local_weights"]

#: Key prefixes stripped from a weights file when no key of the model carries them: a LightningModule
#: checkpoint of `crl_lightning.ImageClassifier` (``backbone.``) and a DistributedDataParallel state (``module.``).
_STRIP_PREFIXES = ("backbone.", "module.")


def create_backbone(
    name: str, num_classes: int, in_chans: int = 3, pretrained: bool | str | Path = False
) -> nn.Module:
    """Build a classification network returning (N, num_classes) logits.

    Names:
        * bare names from `list_backbones`: the paper's 32x32 networks (``cifar_resnet34/50/101``,
          ``preact_resnet164``, ``cifar_vgg16_bn/19_bn``, see `crl_lightning.models.cifar`);
        * ``timm:<name>`` through ``timm.create_model`` (e.g. ``timm:resnet34``, ``timm:resnet18.a1_in1k``);
        * ``torchvision:<name>`` through ``torchvision.models.get_model`` (e.g. ``torchvision:resnet34``,
          the ImageNet ResNet-34 of the paper's Table IV).

    Pretrained weights:

        * ``pretrained`` a path: a local ``state_dict`` file (``torch.save`` or ``.safetensors``; a Lightning
          checkpoint of `crl_lightning.ImageClassifier` works too). Tensors of the final linear layer
          whose shape differs (another number of classes) are skipped, so that head stays freshly
          initialised; any other missing, unexpected or mismatched key is an error.
        * ``pretrained=True`` with ``timm:``: the model's default weights from the local Hugging Face hub
          cache (``huggingface_hub.constants.HF_HUB_CACHE``) or the torch hub folder
          (``torch.hub.get_dir()/checkpoints``), loaded by timm (which adapts the head and ``in_chans``);
          when they are in neither, ``timm.create_model(pretrained=True)`` downloads them into those caches.
        * ``pretrained=True`` with ``torchvision:``: the ``DEFAULT`` weights file in
          ``torch.hub.get_dir()/checkpoints``, else downloaded there by torchvision (``weights.get_state_dict``).
        * Offline (``HF_HUB_OFFLINE=1``, for both) nothing is downloaded, so weights missing from the caches
          fail at once; so does a download that fails (no network). Set ``HF_HUB_OFFLINE=1`` on a machine
          without a network: the Hugging Face hub retries a connection for about a minute before it gives up.

    Args:
        name: backbone name as above.
        num_classes: number of output logits C, ``>= 1``.
        in_chans: input channels (1 for the digits data, 3 for RGB); torchvision models take 3 only.
        pretrained: ``False``, ``True`` (the library's default weights, see above) or a path to a weights file.

    Returns:
        The network, float32, in training mode, mapping (N, in_chans, H, W) to (N, num_classes) logits.

    Raises:
        ValueError: unknown name (the message suggests close bare, ``timm:`` or ``torchvision:`` names) or prefix,
            ``num_classes < 1``, ``in_chans != 3`` for torchvision,
            ``pretrained=True`` for a bare name (no published weights), or weights that do not fit.
        FileNotFoundError: requested pretrained weights are not on disk and could not be downloaded (offline, or
            the download failed); the message lists every path tried.

    Example:
        >>> create_backbone("cifar_resnet34", 10)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    if num_classes < 1:
        raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
    if in_chans < 1:
        raise ValueError(f"in_chans: expected >= 1, got {in_chans}")
    weights_file = None
    if isinstance(pretrained, str | Path) and str(pretrained):
        weights_file = Path(pretrained).expanduser()
        if not weights_file.is_file():
            raise FileNotFoundError(f"pretrained: expected a weights file for {name!r} at {weights_file}, found none")
    elif not isinstance(pretrained, bool | str | None):
        raise ValueError(f"pretrained: expected a bool or a path, got {type(pretrained).__name__}")
    default_weights = pretrained is True

    prefix, sep, arch = name.partition(":")
    if not sep:
        if name not in BACKBONES:
            import timm

            options = {**{m: f"timm:{m}" for m in timm.list_models()}, **{b: b for b in list_backbones()}}
            raise ValueError(
                f"backbone: unknown name {name!r}{_did_you_mean(name, options)}; expected one of {list_backbones()} "
                "or a 'timm:'/'torchvision:' name"
            )
        if default_weights:
            raise ValueError(f"pretrained: {name!r} has no published weights; pass a path to a state_dict file")
        model = BACKBONES[name](num_classes, in_chans)
    elif prefix == "timm":
        model = _create_timm(arch, num_classes, in_chans, default_weights)
    elif prefix == "torchvision":
        model = _create_torchvision(arch, num_classes, in_chans)
        if default_weights:
            _load_torchvision_weights(model, arch)
    else:
        raise ValueError(f"backbone: unknown prefix {prefix!r} in {name!r}; expected 'timm:' or 'torchvision:'")
    if weights_file is not None:
        load_local_weights(model, weights_file, name)
    return model


def _did_you_mean(name: str, options: Mapping[str, str]) -> str:
    """``" (did you mean A, B?)"`` with the (at most 3) options closest to ``name``, or ``""`` when none is close.

    Args:
        name: the name as given.
        options: name to compare -> how to write it (e.g. ``"resnet34"`` -> ``"timm:resnet34"``).
    """
    close = difflib.get_close_matches(name, list(options), n=3)
    return f" (did you mean {', '.join(options[c] for c in close)}?)" if close else ""


def _create_torchvision(arch: str, num_classes: int, in_chans: int) -> nn.Module:
    import torchvision

    available = torchvision.models.list_models(torchvision.models)
    if arch not in available:
        suggestion = _did_you_mean(arch, {m: f"torchvision:{m}" for m in available})
        raise ValueError(f"backbone: torchvision has no classification model {arch!r}{suggestion}")
    if in_chans != 3:
        raise ValueError(f"in_chans: torchvision models take 3 input channels, got {in_chans}; use a timm: name")
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def _offline() -> bool:
    """True when downloads are off: ``HF_HUB_OFFLINE`` (``huggingface_hub.constants``, read at call time)."""
    from huggingface_hub import constants as hf_constants

    return bool(hf_constants.HF_HUB_OFFLINE)


def _download(fetch: Callable[[], Any], missing: str, fetch_hint: str) -> Any:
    """``fetch()`` (a library's download into its cache), or a `FileNotFoundError` when offline or it fails.

    Args:
        fetch: downloads and returns the weights (or the model holding them).
        missing: the start of the error message: what is missing and every path tried.
        fetch_hint: how to get the weights where there is a network, for the message.

    Returns:
        What ``fetch`` returns.

    Raises:
        FileNotFoundError: ``HF_HUB_OFFLINE`` is set, or ``fetch`` raised an ``OSError`` (no network, an HTTP
            error); that error is chained.
    """
    remedy = f"fetch them once where there is a network ({fetch_hint}) or pass pretrained=<path to a state_dict file>"
    if _offline():
        raise FileNotFoundError(f"{missing}. Offline (HF_HUB_OFFLINE=1), nothing is downloaded: {remedy}")
    try:
        return fetch()
    except OSError as err:
        raise FileNotFoundError(f"{missing}. The download failed ({type(err).__name__}: "
                                f"{' '.join(str(err).split())}): {remedy}") from err


def _load_torchvision_weights(model: nn.Module, arch: str) -> None:
    """Fill ``model`` with torchvision's ``DEFAULT`` weights of ``arch``: from the torch hub folder, else downloaded."""
    import torchvision

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    if path.is_file():
        load_local_weights(model, path, f"torchvision:{arch}")
        return
    state = _download(lambda: weights.get_state_dict(progress=True, check_hash=True),
                      f"pretrained: torchvision:{arch} weights {weights} are not in the local cache: looked for {path}",
                      f"torchvision.models.get_model({arch!r}, weights='DEFAULT'), or copy {weights.url} there")
    _load_state_dict(model, state, weights.url, f"torchvision:{arch}")


def find_cached_weights(arch: str) -> tuple[Path | None, list[str]]:
    """Look up timm model ``arch``'s default pretrained weights in the local caches, without any network call.

    Searched, in order: the Hugging Face hub cache (``huggingface_hub.constants.HF_HUB_CACHE``, read
    at call time) for the model's ``hf_hub_id`` (``model.safetensors``, ``pytorch_model.bin`` or the
    configured file name), then ``torch.hub.get_dir()/checkpoints/<file name of the model's url>``.

    Args:
        arch: a timm model name, with or without a pretrained tag (``resnet18``, ``resnet18.a1_in1k``).

    Returns:
        ``(path, looked)``: the first file found (``None`` when none) and a description of every
        location tried, for error messages.

    Raises:
        ValueError: timm has no pretrained configuration for ``arch``.
    """
    from huggingface_hub import constants as hf_constants
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    if cfg is None:
        raise ValueError(f"pretrained: timm has no pretrained weights registered for {arch!r}")
    looked: list[str] = []
    if cfg.hf_hub_id:
        repo_id, _, revision = cfg.hf_hub_id.partition("@")
        cache_dir = Path(hf_constants.HF_HUB_CACHE)
        filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in filenames:
            looked.append(f"hf hub cache {cache_dir} ({repo_id}/{filename})")
            found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision or None)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found), looked
    if isinstance(cfg.url, str) and cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
        looked.append(str(path))
        if path.is_file():
            return path, looked
    return None, looked


def _create_timm(arch: str, num_classes: int, in_chans: int, default_weights: bool) -> nn.Module:
    import timm

    if not timm.is_model(arch):
        suggestion = _did_you_mean(arch, {m: f"timm:{m}" for m in timm.list_models()})
        raise ValueError(f"backbone: timm has no model {arch!r}{suggestion}")
    if not default_weights:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    path, looked = find_cached_weights(arch)
    if path is None:
        return _download(
            lambda: timm.create_model(arch, pretrained=True, num_classes=num_classes, in_chans=in_chans),
            f"pretrained: weights for timm:{arch} are not in the local caches; looked in: {'; '.join(looked)}",
            f"timm.create_model({arch!r}, pretrained=True)",
        )
    # source="" makes timm take the `file` branch: it loads from disk, never from the hub or a url.
    return timm.create_model(
        arch, pretrained=True, num_classes=num_classes, in_chans=in_chans,
        pretrained_cfg_overlay={"file": str(path), "source": ""},
    )


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"pretrained: expected {path} to hold a state_dict (a mapping of tensors)")
    return dict(state)


def _final_linear(model: nn.Module) -> str | None:
    name = None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            name = module_name
    return name


def load_local_weights(model: nn.Module, path: str | Path, name: str = "model") -> None:
    """Load a local weights file into ``model`` in place (no network).

    The file may hold a plain ``state_dict``, a dict with a ``state_dict``/``model`` entry (Lightning
    and many training scripts), or ``.safetensors``. When no key fits as is, the prefixes ``backbone.``
    (an `crl_lightning.ImageClassifier` checkpoint) and ``module.`` (DistributedDataParallel) are
    stripped. Tensors of the final ``nn.Linear`` (the classifier head) that are missing from the file
    or have another shape (another number of classes) are skipped and keep their fresh initialisation.

    Args:
        model: the network to fill.
        path: weights file.
        name: the backbone name, for messages.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file is not a state_dict, or it does not fit ``model`` outside the head
            (the message lists up to five missing, unexpected and mismatched keys).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pretrained: expected a weights file for {name!r} at {path}, found none")
    _load_state_dict(model, _read_state_dict(path), path, name)


def _load_state_dict(model: nn.Module, state: Mapping[str, Tensor], source: str | Path, name: str) -> None:
    """`load_local_weights` once the file is read: ``source`` (the file or url) names the weights in messages."""
    own = model.state_dict()
    if not set(state) & set(own):
        for prefix in _STRIP_PREFIXES:
            stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if set(stripped) & set(own):
                state = stripped
                break
    head = _final_linear(model)

    def is_head(key: str) -> bool:
        return head is not None and key.rsplit(".", 1)[0] == head

    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape]
    bad_shape = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched
                 if not is_head(k)]
    missing = [k for k in own if k not in state and not is_head(k)]
    unexpected = [k for k in state if k not in own]
    if bad_shape or missing or unexpected:
        raise ValueError(
            f"pretrained: {source} does not fit {name!r}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatch {bad_shape[:5]}"
        )
    model.load_state_dict({k: v for k, v in state.items() if k not in mismatched}, strict=False)
