"""What importing the package and starting ``crl`` load: a loss needs torch only (kornia and timm users)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: Libraries a loss user must not pay for (and, but for torch, the libraries of a training framework).
HEAVY = ("lightning", "lightning_fabric", "pytorch_lightning", "torchmetrics", "jsonargparse", "matplotlib",
         "torchvision", "scipy", "sklearn", "timm", "huggingface_hub", "PIL", "pandas", "wandb")


def loaded_after(code: str) -> set[str]:
    """The top-level packages in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize(("code", "torch"), [
    ("import crl_lightning.losses", True),
    ("from crl_lightning.losses import CompetingRatioLoss", True),
    ("from crl_lightning import CompetingRatioLoss, competing_ratio_loss, create_criterion", True),
    ("import crl_lightning", False),  # the root alone imports not even torch
])
def test_a_loss_imports_torch_and_nothing_heavy(code, torch):
    loaded = loaded_after(code)
    assert "crl_lightning" in loaded and ("torch" in loaded) == torch
    assert sorted(loaded.intersection(HEAVY)) == []


def test_the_package_root_loads_the_rest_on_first_use():
    loaded = loaded_after("import crl_lightning\nassert crl_lightning.ImageClassifier.__name__ == 'ImageClassifier'")
    assert {"lightning", "torchmetrics"} <= loaded
    import crl_lightning

    assert {"ImageClassifier", "create_backbone", "CompetingRatioLoss"} <= set(dir(crl_lightning))
    with pytest.raises(AttributeError, match="has no attribute 'ImageClasifier'"):
        crl_lightning.ImageClasifier  # noqa: B018


def test_crl_help_imports_no_library_that_only_a_subcommand_needs():
    """``crl --help`` parses no data and builds no backbone: scikit-learn and timm stay unloaded.

    (Lightning itself imports matplotlib, scipy and torchvision, through torchmetrics.)
    """
    code = ("import sys\nsys.argv = ['crl', '--help']\nfrom crl_lightning.cli import console_main\n"
            "try:\n    console_main()\nexcept SystemExit as end:\n    assert end.code in (0, None), end.code")
    loaded = loaded_after(code)
    assert "jsonargparse" in loaded
    assert sorted(loaded.intersection({"sklearn", "timm", "huggingface_hub", "wandb"})) == []
