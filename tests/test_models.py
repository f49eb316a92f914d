"""The paper's networks (exact parameter counts and structure), `create_backbone` (names, errors, local-only
pretrained weights) and the ImageClassifier's ``channels_last`` / ``compile`` switches."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from crl_lightning import ImageClassifier
from crl_lightning.models import PreActResNet, create_backbone, list_backbones, load_local_weights

#: Exact parameter counts with 10 / 100 classes. Sources of the reference figures:
#: kuangliu/pytorch-cifar models/resnet.py and models/vgg.py (same architectures, counted with the same code:
#: ResNet34 21,282,122; ResNet50 23,520,842; ResNet101 42,512,970; VGG16 14,728,266; VGG19 20,040,522 for
#: 10 classes); He et al. 2016 "Identity Mappings in Deep Residual Networks" (CIFAR-10 tables): ResNet-164 and
#: ResNet-110, 1.7 M each; He et al. 2016 "Deep Residual Learning", Table 6: ResNet-20 0.27 M. (Its ResNet-56 has
#: 0.85 M with parameter-free "option A" shortcuts; ours use 1x1 projections when the width changes: 855,578.)
PARAMS = {
    "cifar_resnet18": (11_173_962, 11_220_132),
    "cifar_resnet34": (21_282_122, 21_328_292),
    "cifar_resnet50": (23_520_842, 23_705_252),
    "cifar_resnet101": (42_512_970, 42_697_380),
    "preact_resnet20": (272_282, 278_132),
    "preact_resnet56": (855_578, 861_428),
    "preact_resnet110": (1_730_522, 1_736_372),
    "preact_resnet164": (1_703_258, 1_726_388),
    "cifar_vgg16_bn": (14_728_266, 14_774_436),
    "cifar_vgg19_bn": (20_040_522, 20_086_692),
}
#: Published rounded figures (millions) the exact counts must round to (CIFAR-10 head).
PUBLISHED_M = {"cifar_resnet34": 21.3, "cifar_resnet50": 23.5, "cifar_resnet101": 42.5, "preact_resnet164": 1.7,
               "preact_resnet110": 1.7, "preact_resnet20": 0.27, "cifar_vgg16_bn": 14.7,
               "cifar_vgg19_bn": 20.0}
#: torchvision's documented count for ResNet-34 (1000 classes); timm's resnet34 is the same network.
IMAGENET_RESNET34 = 21_797_672


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----- the paper's 32x32 networks -----------------------------------------------------------------
def test_registry_lists_exactly_the_counted_networks():
    assert list_backbones() == sorted(PARAMS)


@pytest.mark.parametrize("name", sorted(PARAMS))
@pytest.mark.parametrize("column", [0, 1], ids=["cifar10", "cifar100"])
def test_exact_parameter_counts(name, column):
    num_classes = (10, 100)[column]
    count = n_params(create_backbone(name, num_classes))
    assert count == PARAMS[name][column]
    if column == 0 and name in PUBLISHED_M:  # the built network's count rounds to the published figure
        assert round(count / 1e6, 2 if PUBLISHED_M[name] < 1 else 1) == PUBLISHED_M[name]


@pytest.mark.parametrize("name", ["cifar_resnet34", "preact_resnet164", "cifar_vgg16_bn", "cifar_vgg19_bn"])
def test_32x32_forward_and_backward(name):
    torch.manual_seed(0)
    model = create_backbone(name, 100)
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 100) and logits.dtype == torch.float32
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ["cifar_resnet34", "preact_resnet20", "cifar_vgg16_bn"])
def test_single_channel_input(name):
    model = create_backbone(name, 10, in_chans=1).eval()
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 10)


def test_cifar_resnet34_stem_and_stages():
    model = create_backbone("cifar_resnet34", 10)
    conv1 = model.conv1
    assert (conv1.kernel_size, conv1.stride, conv1.padding) == ((3, 3), (1, 1), (1, 1))
    assert isinstance(model.maxpool, nn.Identity)
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    shapes = []
    model.layer4.register_forward_hook(lambda module, inputs, output: shapes.append(tuple(output.shape)) or None)
    model.eval()(torch.randn(1, 3, 32, 32))
    assert shapes == [(1, 512, 4, 4)]  # 32 -> 32 -> 16 -> 8 -> 4: no stride in the stem


def test_cifar_resnet50_101_use_bottlenecks():
    from torchvision.models.resnet import Bottleneck

    for name, blocks in (("cifar_resnet50", [3, 4, 6, 3]), ("cifar_resnet101", [3, 4, 23, 3])):
        model = create_backbone(name, 10)
        assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == blocks
        assert isinstance(model.layer1[0], Bottleneck) and model.fc.in_features == 2048


def test_preact_resnet164_structure():
    model = create_backbone("preact_resnet164", 10)
    assert isinstance(model, PreActResNet)
    blocks = list(model.layers)
    assert len(blocks) == 54  # 3 stages x 18 bottlenecks
    assert [b.conv3.out_channels for b in (blocks[0], blocks[18], blocks[36])] == [64, 128, 256]
    assert [b.conv2.stride for b in (blocks[0], blocks[18], blocks[36])] == [(1, 1), (2, 2), (2, 2)]
    shortcuts = [b for b in blocks if b.shortcut is not None]
    assert shortcuts == [blocks[0], blocks[18], blocks[36]]
    # weighted layers on the main path: the stem, 3 convs per bottleneck and the classifier = 164
    main_convs = [m for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and "shortcut" not in name]
    assert len(main_convs) + 1 == 164
    assert model.fc.in_features == 256
    # pre-activation: the block output is a plain sum (no BN/ReLU after the addition), final BN-ReLU before pooling
    assert isinstance(model.bn, nn.BatchNorm2d) and model.bn.num_features == 256


@pytest.mark.parametrize(("name", "convs"), [("cifar_vgg16_bn", 13), ("cifar_vgg19_bn", 16)])
def test_vgg_bn_layers(name, convs):
    model = create_backbone(name, 10)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == convs
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == convs
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and (linears[0].in_features, linears[0].out_features) == (512, 10)


@pytest.mark.parametrize(("depth", "bottleneck"), [(165, True), (21, False), (2, False)])
def test_preact_resnet_rejects_bad_depths(depth, bottleneck):
    with pytest.raises(ValueError, match=f"depth: expected .*n\\+2 .*got {depth}"):
        PreActResNet(depth, bottleneck=bottleneck)


# ----- create_backbone: names and errors ----------------------------------------------------------
def test_timm_and_torchvision_imagenet_resnet34():
    tv = create_backbone("torchvision:resnet34", 1000)
    tm = create_backbone("timm:resnet34", 1000)
    assert n_params(tv) == n_params(tm) == IMAGENET_RESNET34
    assert n_params(create_backbone("torchvision:resnet34", 200)) == IMAGENET_RESNET34 - 513 * 800
    assert create_backbone("timm:resnet18", 10, in_chans=1).conv1.in_channels == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"name": "resnet34", "num_classes": 10}, ValueError, "unknown name 'resnet34'.*cifar_resnet34"),
        ({"name": "keras:resnet34", "num_classes": 10}, ValueError, "unknown prefix 'keras'"),
        ({"name": "timm:no_such_net", "num_classes": 10}, ValueError, "timm has no model 'no_such_net'"),
        ({"name": "torchvision:no_such_net", "num_classes": 10}, ValueError, "torchvision has no .*'no_such_net'"),
        ({"name": "cifar_resnet34", "num_classes": 0}, ValueError, "num_classes: expected >= 1, got 0"),
        ({"name": "torchvision:resnet34", "num_classes": 10, "in_chans": 1}, ValueError, "3 input channels, got 1"),
        ({"name": "cifar_resnet34", "num_classes": 10, "pretrained": True}, ValueError, "no published weights"),
        ({"name": "cifar_resnet34", "num_classes": 10, "pretrained": 3}, ValueError, "a bool or a path, got int"),
        ({"name": "cifar_resnet34", "num_classes": 10, "pretrained": "/nonexistent/w.pt"}, FileNotFoundError,
         "at /nonexistent/w.pt"),
    ],
)
def test_create_backbone_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        create_backbone(**kwargs)


@pytest.mark.parametrize(("name", "message"), [
    ("preact_resnet2", "name 'preact_resnet2' (did you mean preact_resnet20, preact_resnet56, preact_resnet164?);"),
    ("resnet34", "unknown name 'resnet34' (did you mean timm:resnet34, "),  # a timm name without its prefix
    ("timm:resnt50", "timm has no model 'resnt50' (did you mean timm:resnet50, "),
    ("torchvision:resnet3", "torchvision has no classification model 'resnet3' (did you mean torchvision:resnet34, "),
])
def test_an_unknown_backbone_name_suggests_close_names(name, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        create_backbone(name, 10)
    with pytest.raises(ValueError, match=r"'no_such_net'$"):  # nothing close: no suggestion
        create_backbone("timm:no_such_net", 10)


# ----- pretrained weights: the libraries' caches and downloads, tested offline ----------------------
@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Point the Hugging Face and torch hub caches at empty folders and make any socket connection fail."""
    import huggingface_hub.constants as hf_constants

    hf, hub = tmp_path / "hf", tmp_path / "torch_hub"
    hf.mkdir()
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hf))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(hub))

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    yield hf, hub
    torch.hub.set_dir(previous)


@pytest.fixture
def offline(empty_caches, monkeypatch):
    """`empty_caches` with ``HF_HUB_OFFLINE=1`` (as ``huggingface_hub.constants`` reads it at import)."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return empty_caches


def test_timm_pretrained_missing_offline_fails_fast_and_says_where(offline):
    hf, hub = offline
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as info:
        create_backbone("timm:resnet18", 10, pretrained=True)
    assert time.perf_counter() - start < 5.0
    message = str(info.value)
    assert str(hf) in message and "timm/resnet18.a1_in1k/model.safetensors" in message
    assert str(hub / "checkpoints" / "resnet18_a1_0-d63eafa0.pth") in message
    assert "Offline (HF_HUB_OFFLINE=1), nothing is downloaded" in message


def test_torchvision_pretrained_missing_offline_fails_fast_and_says_where(offline):
    _, hub = offline
    with pytest.raises(FileNotFoundError, match=str(hub / "checkpoints" / "resnet34-b627a593.pth")):
        create_backbone("torchvision:resnet34", 10, pretrained=True)


def test_timm_pretrained_downloads_through_timms_hub_code_into_the_hf_cache(empty_caches, monkeypatch):
    """Not in the caches and online: ``timm.create_model(pretrained=True)`` fetches the file (stood in for here)."""
    import timm.models._hub

    hf, _ = empty_caches
    torch.manual_seed(4)
    source = create_backbone("timm:resnet18", 1000)
    asked = []

    def hf_hub_download(repo_id, filename, revision=None, cache_dir=None, **kwargs):
        asked.append((repo_id, filename))
        return str(_fake_hf_snapshot(hf, repo_id, source.state_dict()))

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", hf_hub_download)
    model = create_backbone("timm:resnet18", 10, pretrained=True)
    assert asked == [("timm/resnet18.a1_in1k", "model.safetensors")]
    assert torch.equal(model.layer2[0].conv1.weight, source.layer2[0].conv1.weight)
    assert model.fc.weight.shape == (10, 512)
    monkeypatch.setattr(timm.models._hub, "hf_hub_download", None)  # now in the cache: no second download
    assert torch.equal(create_backbone("timm:resnet18", 10, pretrained=True).conv1.weight, source.conv1.weight)


def test_torchvision_pretrained_downloads_through_torchvisions_hub_code(empty_caches, monkeypatch):
    import torchvision.models._api

    torch.manual_seed(5)
    source = create_backbone("torchvision:resnet34", 1000)
    asked = []

    def load_state_dict_from_url(url, **kwargs):
        asked.append((url, kwargs))
        return source.state_dict()

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", load_state_dict_from_url)
    model = create_backbone("torchvision:resnet34", 200, pretrained=True)
    assert asked == [("https://download.pytorch.org/models/resnet34-b627a593.pth",
                      {"progress": True, "check_hash": True})]
    assert torch.equal(model.layer3[5].conv2.weight, source.layer3[5].conv2.weight)
    assert model.fc.weight.shape == (200, 512)


@pytest.mark.parametrize("name", ["timm:resnet18", "torchvision:resnet34"])
def test_a_failed_download_fails_at_once_naming_every_path_tried(name, empty_caches, monkeypatch):
    import timm.models._hub
    import torchvision.models._api

    _, hub = empty_caches

    def no_connection(*args, **kwargs):
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", no_connection)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_connection)
    with pytest.raises(FileNotFoundError) as info:
        create_backbone(name, 10, pretrained=True)
    message = str(info.value)
    file = "resnet18_a1_0-d63eafa0.pth" if name.startswith("timm") else "resnet34-b627a593.pth"
    assert str(hub / "checkpoints" / file) in message
    assert "The download failed (OSError: [Errno 101] Network is unreachable)" in message
    assert isinstance(info.value.__cause__, OSError)


def _fake_hf_snapshot(hf: Path, repo: str, state: dict) -> Path:
    from safetensors.torch import save_file

    folder = hf / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0123abcd")
    snapshot = folder / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    return snapshot / "model.safetensors"


def test_timm_pretrained_from_the_local_hf_cache(empty_caches):
    hf, _ = empty_caches
    torch.manual_seed(1)
    source = create_backbone("timm:resnet18", 1000)
    _fake_hf_snapshot(hf, "timm/resnet18.a1_in1k", source.state_dict())
    model = create_backbone("timm:resnet18", 10, pretrained=True)
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)
    assert model.fc.weight.shape == (10, 512)  # new head, freshly initialised
    gray = create_backbone("timm:resnet18", 10, in_chans=1, pretrained=True)  # timm sums the RGB filters
    assert torch.allclose(gray.conv1.weight[:, 0], source.conv1.weight.sum(dim=1))


def test_torchvision_pretrained_from_the_torch_hub_folder(empty_caches):
    _, hub = empty_caches
    torch.manual_seed(2)
    source = create_backbone("torchvision:resnet34", 1000)
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(source.state_dict(), hub / "checkpoints" / "resnet34-b627a593.pth")
    model = create_backbone("torchvision:resnet34", 200, pretrained=True)
    assert torch.equal(model.layer3[5].conv2.weight, source.layer3[5].conv2.weight)
    assert model.fc.weight.shape == (200, 512)


def test_local_state_dict_path_loads_every_tensor(tmp_path):
    torch.manual_seed(3)
    source = create_backbone("preact_resnet20", 10)
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    model = create_backbone("preact_resnet20", 10, pretrained=str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_local_weights_other_head_keeps_a_fresh_head(tmp_path):
    torch.manual_seed(4)
    source = create_backbone("cifar_vgg16_bn", 100)
    path = tmp_path / "w.pt"
    torch.save({"state_dict": source.state_dict()}, path)
    model = create_backbone("cifar_vgg16_bn", 10, pretrained=path)
    assert torch.equal(model[0][0].weight, source[0][0].weight)
    assert model[3].weight.shape == (10, 512)


def test_local_weights_from_a_classifier_checkpoint(tmp_path):
    torch.manual_seed(5)
    classifier = ImageClassifier("preact_resnet20", num_classes=10)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": classifier.state_dict(), "epoch": 3}, path)
    model = create_backbone("preact_resnet20", 10, pretrained=path)
    assert torch.equal(model.fc.weight, classifier.backbone.fc.weight)


def test_local_weights_of_another_network_are_refused(tmp_path):
    path = tmp_path / "r20.pt"
    torch.save(create_backbone("preact_resnet20", 10).state_dict(), path)
    with pytest.raises(ValueError, match=r"does not fit 'preact_resnet56': missing \['layers\.9\.bn1"):
        create_backbone("preact_resnet56", 10, pretrained=path)
    model = create_backbone("cifar_resnet18", 10)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_local_weights(model, path)


def test_local_weights_reject_a_non_state_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="to hold a state_dict"):
        create_backbone("preact_resnet20", 10, pretrained=path)


# ----- channels_last and compile switches --------------------------------------------------------
@pytest.mark.parametrize("name", ["cifar_resnet34", "preact_resnet20"])
def test_channels_last_matches_contiguous(name):
    torch.manual_seed(6)
    reference = ImageClassifier(name, num_classes=10).eval()
    model = ImageClassifier(name, num_classes=10, channels_last=True).eval()
    model.load_state_dict(reference.state_dict())
    conv = next(m for m in model.backbone.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected, got = reference(images), model(images)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_compile_switch_wraps_the_backbone():
    from torch._dynamo.eval_frame import OptimizedModule

    model = ImageClassifier("preact_resnet20", num_classes=10, compile=True)
    assert isinstance(model.network, OptimizedModule)
    assert model.network._orig_mod is model.backbone
    plain = ImageClassifier("preact_resnet20", num_classes=10)
    assert plain.network is plain.backbone
