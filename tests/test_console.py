"""What a user of the ``crl`` command sees: a quiet console, one-line errors, where the results went,
``predictions.csv``, and the README's paths (every one exists after the command it sits under).

The ``crl`` process runs as a subprocess (``python -m crl_lightning``, the console script's `console_main`).
A *warning line* on stderr is a line with ``warn``, ``tip`` (as a word) or ``deprecat`` in any case, or a
Python warning's ``file.py:N:`` location; Lightning's info lines ("Seed set to 0", "GPU available: ...") are
not warnings.
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crl_lightning.cli import check_checkpoint, main
from crl_lightning.console import error_message
from crl_lightning.data import Augmentation, DigitsDataModule
from crl_lightning.runs import PREDICTIONS_FILENAME

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "examples" / "configs" / "digits_crl.yaml")
README = (ROOT / "README.md").read_text(encoding="utf-8")
WARNING_LINE = re.compile(r"warn|\btip\b|deprecat|\.py:\d+: ", re.IGNORECASE)


def crl_process(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    """Start ``crl ARGS`` as its own process in ``cwd``; ``env`` adds environment variables."""
    environment = {k: v for k, v in os.environ.items() if k != "CRL_TRACEBACK"} | env
    return subprocess.Popen([sys.executable, "-m", "crl_lightning", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environment)


def crl(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """Run ``crl ARGS`` as its own process in ``cwd`` and wait for it."""
    process = crl_process(args, cwd, **env)
    stdout, stderr = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``make demo`` (``crl fit --config examples/configs/digits_crl.yaml``) for one epoch, in a fresh folder."""
    cwd = tmp_path_factory.mktemp("demo")
    return cwd, crl(["fit", "--config", DIGITS, "--trainer.max_epochs", "1"], cwd)


def test_demo_prints_no_warning_lines(demo):
    _, done = demo
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if WARNING_LINE.search(line)] == []


def test_demo_ends_with_the_run_folder_and_its_files(demo):
    cwd, done = demo
    assert done.stdout.splitlines()[-1] == (
        "crl fit: results in runs/digits_crl/lightning_logs/version_0/: checkpoints/ config.yaml "
        "confusion_matrix.csv figures/ history.csv hparams.yaml metrics.csv test_metrics.json")
    assert (cwd / "runs/digits_crl/lightning_logs/version_0/test_metrics.json").is_file()


def readme_commands(prefix: str) -> list[str]:
    """The README's command lines (in code blocks, continuation lines joined) that start with ``prefix``."""
    lines = (" ".join(line.split()) for line in README.replace("\\\n", " ").splitlines())
    return [line for line in lines if line.startswith(prefix)]


def test_readme_paths_exist_after_their_commands(demo, monkeypatch, capsys):
    """The demo's run folder and files, then the README's predict command and the file it writes."""
    cwd, _ = demo
    monkeypatch.chdir(cwd)
    monkeypatch.setattr("sys.argv", ["crl"])
    (predict,) = readme_commands("crl predict --config examples/configs/digits_crl.yaml --ckpt_path")
    args = [DIGITS if a == "examples/configs/digits_crl.yaml" else a for a in shlex.split(predict)[1:]]
    args = [match for a in args for match in (sorted(glob.glob(a)) if "*" in a else [a])]  # as the shell would
    main([*args, "--trainer.enable_progress_bar", "false"])
    assert capsys.readouterr().out.splitlines()[-1] == (
        "crl predict: wrote runs/digits_crl/lightning_logs/version_1/predictions.csv")
    paths = sorted(set(re.findall(r"runs/digits_crl/[^\s`'\"):,]*", README)))
    assert "runs/digits_crl/lightning_logs/version_0/test_metrics.json" in paths
    assert "runs/digits_crl/lightning_logs/version_1/predictions.csv" in paths
    assert [p for p in paths if not glob.glob(p)] == []


def read_predictions(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


@pytest.mark.usefixtures("plain_argv")
def test_predict_writes_every_class_probability_of_the_360_test_digits(demo, tmp_path, capsys):
    cwd, _ = demo
    ckpt = cwd / "runs/digits_crl/lightning_logs/version_0/checkpoints/last.ckpt"
    main(["predict", "--config", DIGITS, "--ckpt_path", str(ckpt), "--trainer.default_root_dir", str(tmp_path),
          "--trainer.enable_progress_bar", "false", "--trainer.callbacks+=crl_lightning.callbacks.PredictionWriter",
          "--trainer.callbacks.top_k", "null"])
    path = tmp_path / "lightning_logs" / "version_0" / PREDICTIONS_FILENAME
    assert capsys.readouterr().out.splitlines()[-1] == f"crl predict: wrote {path}"
    header, rows = read_predictions(path)
    assert header[:4] == ["index", "path", "predicted", "predicted_name"] and header[-1] == "top10_prob"
    assert len(rows) == 360 and [int(r["index"]) for r in rows] == list(range(360))
    for row in rows:
        probs = [float(row[f"top{i}_prob"]) for i in range(1, 11)]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4) and probs == sorted(probs, reverse=True)
        assert sorted(row[f"top{i}_class"] for i in range(1, 11)) == [str(d) for d in range(10)]
        assert row["predicted"] == row["top1_class"] == row["predicted_name"] and row["path"] == ""
    # the predicted classes are those of the checkpoint's weights, recounted here
    from crl_lightning import ImageClassifier

    model = ImageClassifier.load_from_checkpoint(ckpt).eval()
    data = DigitsDataModule()
    data.setup("test")
    with torch.no_grad():
        predicted = torch.cat([model(images).argmax(1) for images, _ in data.test_dataloader()])
    assert [int(r["predicted"]) for r in rows] == predicted.tolist()


@pytest.mark.usefixtures("plain_argv")
def test_predict_on_a_folder_of_unlabelled_images(demo, tmp_path):
    """Digits saved as PNG files (in sub-folders, beside a text file) get the test split's own predictions."""
    cwd, _ = demo
    ckpt = cwd / "runs/digits_crl/lightning_logs/version_0/checkpoints/last.ckpt"
    data = DigitsDataModule()
    data.setup("test")
    test_images = data.datasets["test"].dataset.images  # uint8 (360, 1, 8, 8)
    folder = tmp_path / "my_digits"
    files = [folder / "a" / "0.png", folder / "a" / "1.png", folder / "b.png"]
    for i, file in enumerate(files):
        file.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(test_images[i, 0].numpy()).convert("RGB").save(file)  # RGB files: read as grey
    (folder / "notes.txt").write_text("not an image")
    main(["predict", "--config", DIGITS, "--ckpt_path", str(ckpt), "--trainer.default_root_dir", str(tmp_path),
          "--trainer.enable_progress_bar", "false", "--data.init_args.predict_dir", str(folder)])
    header, rows = read_predictions(tmp_path / "lightning_logs" / "version_0" / PREDICTIONS_FILENAME)
    assert header[-3:] == ["top5_class", "top5_name", "top5_prob"]  # the default: the 5 most probable classes
    assert [r["path"] for r in rows] == [str(f) for f in files]
    from crl_lightning import ImageClassifier

    model = ImageClassifier.load_from_checkpoint(ckpt).eval()
    images = torch.stack([data.datasets["test"][i][0] for i in range(3)])  # the test split's transform
    with torch.no_grad():
        top = torch.softmax(model(images), dim=1).topk(5, dim=1)
    for row, classes, probs in zip(rows, top.indices.tolist(), top.values.tolist(), strict=True):
        assert [int(row[f"top{i}_class"]) for i in range(1, 6)] == classes
        np.testing.assert_allclose([float(row[f"top{i}_prob"]) for i in range(1, 6)], probs, rtol=1e-5)


def test_predict_dir_batches_equal_the_test_split_on_the_device_too(tmp_path):
    """With ``augment.on_device`` the folder's images arrive as uint8 and are normalised as the test split's."""
    reference = DigitsDataModule()
    reference.setup("test")
    for i in range(4):
        Image.fromarray(reference.datasets["test"].dataset.images[i, 0].numpy()).save(tmp_path / f"{i}.png")
    expected = torch.stack([reference.datasets["test"][i][0] for i in range(4)])
    for on_device in (False, True):
        data = DigitsDataModule(augment=Augmentation(on_device=on_device), predict_dir=tmp_path)
        data.setup("predict")
        images, target = data.on_after_batch_transfer(next(iter(data.predict_dataloader())), 0)
        torch.testing.assert_close(images, expected)
        assert target.tolist() == [-1] * 4  # unlabelled


def error_lines(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("crl: error:")]


BAD_INPUTS = {  # name -> (arguments after --config DIGITS, what the error line must name)
    "backbone typo": (["--model.init_args.backbone", "preact_resnet2"], ["backbone", "'preact_resnet2'"]),
    "negative alpha": (["--model.init_args.criterion.init_args.alpha", "-1"], ["alpha", "got -1.0"]),
    "criterion registry name": (["--model.init_args.criterion", "crl"],
                                ["model.init_args.criterion", "crl_lightning.losses.CompetingRatioLoss"]),
    "no max_epochs": (["--trainer.max_epochs", "null", "--model.init_args.lr_scheduler", "null"],
                      ["trainer.max_epochs"]),
    "num_classes the link overrides": (["--model.init_args.num_classes", "5"],
                                       ["model.init_args.num_classes", "data's value 10", "got 5"]),
}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """The ``crl`` processes of every bad input, run side by side (each mostly imports torch and Lightning)."""
    cwd = tmp_path_factory.mktemp("bad")
    truncated = cwd / "cut.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])  # a copy cut short
    commands = {name: (["fit", "--config", DIGITS, *args, "--trainer.default_root_dir", "runs"], {})
                for name, (args, _) in BAD_INPUTS.items()}
    commands["corrupt checkpoint"] = (["test", "--config", DIGITS, "--ckpt_path", str(truncated)], {})
    commands["traceback"] = (["fit", "--config", DIGITS, *BAD_INPUTS["backbone typo"][0]], {"CRL_TRACEBACK": "1"})
    processes = {name: crl_process(args, cwd, **env) for name, (args, env) in commands.items()}
    runs = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=600)
        runs[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    runs["cwd"], runs["truncated"] = cwd, truncated
    return runs


@pytest.mark.parametrize("bad", list(BAD_INPUTS))
def test_a_bad_input_ends_crl_with_one_error_line(bad, bad_runs):
    done, named = bad_runs[bad], BAD_INPUTS[bad][1]
    assert done.returncode == 1
    assert len(error_lines(done)) == 1 and done.stderr.splitlines()[-1] == error_lines(done)[0]
    assert all(name in error_lines(done)[0] for name in named), error_lines(done)
    assert "Traceback" not in done.stderr and "Namespace(" not in done.stderr
    assert not (bad_runs["cwd"] / "runs").exists()  # nothing trained


def test_a_corrupt_checkpoint_is_named(bad_runs):
    done = bad_runs["corrupt checkpoint"]
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (line,) = error_lines(done)
    assert line.startswith(f"crl: error: ckpt_path: expected a complete checkpoint (a torch.save zip archive), got "
                           f"{bad_runs['truncated']}, which is truncated or corrupt")


def test_traceback_on_request(bad_runs):
    done = bad_runs["traceback"]
    assert done.returncode == 1 and "Traceback (most recent call last)" in done.stderr
    assert "ValueError: backbone: unknown name 'preact_resnet2'" in done.stderr and not error_lines(done)


def test_check_checkpoint_reads_every_record(tmp_path):
    path = tmp_path / "ok.ckpt"
    torch.save({"state_dict": {"w": torch.arange(5000.0)}}, path)
    check_checkpoint(path)  # a complete checkpoint passes
    data = bytearray(path.read_bytes())
    start = data.index(np.arange(5000, dtype=np.float32).tobytes()[:64])  # the tensor's bytes
    data[start + 100:start + 200] = bytes(100)
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"got {re.escape(str(path))}, whose record .*/data/0 fails its checksum"):
        check_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="ckpt_path: expected a checkpoint file, got .*missing.ckpt"):
        check_checkpoint(tmp_path / "missing.ckpt")
    check_checkpoint(tmp_path)  # a folder (a sharded checkpoint) is Lightning's to read


@pytest.mark.usefixtures("plain_argv")
@pytest.mark.parametrize(("args", "line"), [
    (["--trainer.max_epochs", "abc"], "trainer.max_epochs: expected int, got 'abc'"),
    (["--data.init_args.batch_sizee", "3"],
     "data.init_args.batch_sizee: unknown option (did you mean data.init_args.batch_size?)"),
    (["--model.init_args.criterion", "CrossEntropyLoss"], "model.init_args.criterion: Multiple subclasses with name "
     "CrossEntropyLoss. Give the full class path to avoid ambiguity: torch.nn.CrossEntropyLoss, "
     "crl_lightning.losses.CrossEntropyLoss. (got 'CrossEntropyLoss')"),
])
def test_parse_errors_read_as_one_line(args, line):
    with pytest.raises(argparse.ArgumentError) as raised:
        main(["fit", "--config", DIGITS, *args])
    assert error_message(raised.value) == line


def test_importing_the_package_hides_no_warning():
    import crl_lightning.cli  # noqa: F401  (imported, console_main not run)

    assert not any("LeafSpec" in str(f[1]) or "tensorboardX" in str(f[1]) for f in warnings.filters)
