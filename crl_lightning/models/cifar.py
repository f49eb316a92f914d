"""The paper's 32x32-input networks (CIFAR-10/100, SVHN), registered under bare names.

* ``cifar_resnet18/34/50/101``: torchvision's ResNets with the stem replaced by a 3x3 stride-1
  convolution and no max-pool (the common CIFAR adaptation of kuangliu/pytorch-cifar, ``models/resnet.py``).
* ``preact_resnet20/56/110/164``: pre-activation ResNets of He et al. 2016 ("Identity Mappings in Deep
  Residual Networks"), 3 stages of 16/32/64 base widths; depth 9n+2 with bottlenecks (164), 6n+2 with
  basic blocks (20-110). This is the paper's "ResNet164".
* ``cifar_vgg16_bn/19_bn``: torchvision's VGG-BN feature extractors (13/16 conv3x3-BN-ReLU, 5 max-pools),
  then global pooling (1x1 at 32x32 input) and one linear layer, as kuangliu/pytorch-cifar ``models/vgg.py``.

Parameter counts (10 / 100 classes), tested in ``tests/test_models.py``:

===================  ==========  ==========  ==========================================================
name                 CIFAR-10    CIFAR-100   reference
===================  ==========  ==========  ==========================================================
cifar_resnet34       21,282,122  21,328,292  kuangliu ResNet34: 21,282,122 (same architecture)
cifar_resnet50       23,520,842  23,705,252  kuangliu ResNet50: 23,520,842
cifar_resnet101      42,512,970  42,697,380  kuangliu ResNet101: 42,512,970
preact_resnet164      1,703,258   1,726,388  He et al. 2016 (Identity Mappings): 1.7 M
cifar_vgg16_bn       14,728,266  14,774,436  kuangliu VGG16: 14,728,266
cifar_vgg19_bn       20,040,522  20,086,692  kuangliu VGG19: 20,040,522
===================  ==========  ==========  ==========================================================

Input: the VGGs need H, W >= 32 (five 2x2 max-pools); the ResNets take any H, W (global average pooling).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn

__all__ = ["PreActResNet", "register_backbone", "list_backbones", "BACKBONES"]

#: bare name -> constructor ``fn(num_classes, in_chans) -> nn.Module``.
BACKBONES: dict[str, Callable[[int, int], nn.Module]] = {}


def register_backbone(name: str) -> Callable[[Callable[[int, int], nn.Module]], Callable[[int, int], nn.Module]]:
    """Decorator registering ``fn(num_classes, in_chans)`` under a bare backbone name.

    Raises:
        ValueError: the name is already registered.
    """

    def decorator(fn: Callable[[int, int], nn.Module]) -> Callable[[int, int], nn.Module]:
        if name in BACKBONES:
            raise ValueError(f"backbone {name!r} is already registered")
        BACKBONES[name] = fn
        return fn

    return decorator


def list_backbones() -> list[str]:
    """Sorted bare backbone names (use ``timm:<name>`` / ``torchvision:<name>`` for the others)."""
    return sorted(BACKBONES)


def _cifar_resnet(arch: str, num_classes: int, in_chans: int) -> nn.Module:
    from torchvision.models import resnet as tv_resnet

    model = getattr(tv_resnet, arch)(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


for _depth in (18, 34, 50, 101):
    register_backbone(f"cifar_resnet{_depth}")(partial(_cifar_resnet, f"resnet{_depth}"))


class _PreActUnit(nn.Module):
    """Pre-activation residual unit: BN-ReLU before each conv; the shortcut taps the first BN-ReLU output.

    Subclasses build ``bn1``/``conv1`` and the convs named in ``later`` (applied after BN-ReLU), then
    call `_build_shortcut`.
    """

    expansion = 1
    later: tuple[tuple[str, str], ...] = ()
    bn1: nn.Module
    conv1: nn.Module
    shortcut: nn.Module | None

    def _build_shortcut(self, in_planes: int, out: int, stride: int) -> None:
        self.shortcut = nn.Conv2d(in_planes, out, 1, stride, bias=False) if stride != 1 or in_planes != out else None

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        for bn, conv in self.later:
            out = getattr(self, conv)(torch.relu(getattr(self, bn)(out)))
        return out + shortcut


class _PreActBlock(_PreActUnit):
    later = (("bn2", "conv2"),)

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(in_planes), nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(planes), nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self._build_shortcut(in_planes, planes * self.expansion, stride)


class _PreActBottleneck(_PreActUnit):
    expansion = 4
    later = (("bn2", "conv2"), ("bn3", "conv3"))

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        out = planes * self.expansion
        self.bn1, self.conv1 = nn.BatchNorm2d(in_planes), nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(planes), nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3, self.conv3 = nn.BatchNorm2d(planes), nn.Conv2d(planes, out, 1, bias=False)
        self._build_shortcut(in_planes, out, stride)


class PreActResNet(nn.Module):
    """Pre-activation ResNet for 32x32 inputs (He et al. 2016, "Identity Mappings in Deep Residual Networks").

    Args:
        depth: 9n+2 with ``bottleneck=True`` (164 -> n=18, ~1.7 M parameters), else 6n+2 (20, 56, 110).
        num_classes: size of the output layer.
        in_chans: input channels.
        bottleneck: bottleneck (1x1-3x3-1x1, x4 expansion) or basic (3x3-3x3) blocks.

    Shape:
        (N, in_chans, H, W) float -> (N, num_classes) logits; any H, W >= 4 (global average pooling).

    Raises:
        ValueError: ``depth`` not of the form above.
    """

    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 3, bottleneck: bool = True) -> None:
        super().__init__()
        per = 9 if bottleneck else 6
        if (depth - 2) % per != 0 or depth < per + 2:
            kind = "bottleneck" if bottleneck else "basic"
            raise ValueError(f"depth: expected {per}n+2 for {kind} blocks, got {depth}")
        n = (depth - 2) // per
        block = _PreActBottleneck if bottleneck else _PreActBlock
        self.conv1 = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        layers, in_planes = [], 16
        for i, planes in enumerate((16, 32, 64)):
            for j in range(n):
                layers.append(block(in_planes, planes, 2 if (i > 0 and j == 0) else 1))
                in_planes = planes * block.expansion
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn(self.layers(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(out), 1))


for _depth, _bottleneck in ((20, False), (56, False), (110, False), (164, True)):
    register_backbone(f"preact_resnet{_depth}")(partial(PreActResNet, _depth, bottleneck=_bottleneck))


def _cifar_vgg(cfg: str, num_classes: int, in_chans: int) -> nn.Module:
    from torchvision.models import vgg as tv_vgg

    layers = tv_vgg.make_layers(tv_vgg.cfgs[cfg], batch_norm=True)
    if in_chans != 3:
        layers[0] = nn.Conv2d(in_chans, 64, kernel_size=3, padding=1)
    return nn.Sequential(layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))


register_backbone("cifar_vgg16_bn")(lambda num_classes, in_chans: _cifar_vgg("D", num_classes, in_chans))
register_backbone("cifar_vgg19_bn")(lambda num_classes, in_chans: _cifar_vgg("E", num_classes, in_chans))
