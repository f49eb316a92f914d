"""What ``crl`` says on a misspelled or abbreviated option, in ``--*.help``, on Ctrl-C and on resume."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crl_lightning.cli import main
from crl_lightning.console import error_message, interrupted_message

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "examples" / "configs" / "digits_crl.yaml")
WANDB = str(ROOT / "examples" / "configs" / "wandb.yaml")
WARNING_LINE = re.compile(r"warn|\btip\b|deprecat|\.py:\d+: ", re.IGNORECASE)


@pytest.mark.usefixtures("plain_argv")
@pytest.mark.parametrize(("args", "line"), [
    (["--trainer.max_epoch", "2"], "--trainer.max_epoch: unknown option (did you mean --trainer.max_epochs?)"),
    (["--trainer.max_epoks", "2"], "--trainer.max_epoks: unknown option (did you mean --trainer.max_epochs?)"),
    (["--trainr.max_epochs", "2"], "--trainr.max_epochs: unknown option (did you mean --trainer.max_epochs?)"),
    (["--data.init_args.batch_sizee", "3"],
     "data.init_args.batch_sizee: unknown option (did you mean data.init_args.batch_size?)"),
    (["--model.init_args.criterion.init_args.alpah", "2"],
     "model.init_args.criterion.init_args.alpah: unknown option "
     "(did you mean model.init_args.criterion.init_args.alpha?)"),
    (["--data.init_args.zzzzzz", "3"], "data.init_args.zzzzzz: unknown option"),  # nothing close
])
def test_an_unknown_or_abbreviated_option_is_refused_naming_the_closest_key(args, line):
    with pytest.raises(argparse.ArgumentError) as raised:  # an abbreviation would be taken, and the config printed
        main(["fit", "--config", DIGITS, *args, "--print_config"])
    assert error_message(raised.value) == line


@pytest.mark.usefixtures("plain_argv")
@pytest.mark.parametrize("option", ["--data.help=ImageFolderDataModule",
                                    "--trainer.callbacks.help=crl_lightning.guard.NonFiniteGuard"])
def test_help_of_a_class_points_to_nothing_above(option, capsys):
    with pytest.raises(SystemExit):
        main(["fit", option])
    out = capsys.readouterr().out
    assert "see above" not in " ".join(out.split()) and "see the class docstring" in " ".join(out.split())


def test_the_interrupted_line_says_how_to_resume():
    assert interrupted_message(["fit", "--config", "a b.yaml", "--ckpt_path", "x.ckpt", "--trainer.max_epochs=3"]) \
        == ("interrupted; to resume from the last epoch end (the last.ckpt of a ModelCheckpoint with save_last: true): "
            "crl fit --config 'a b.yaml' --trainer.max_epochs=3 --ckpt_path last")
    assert interrupted_message(["fit", "--ckpt_path=best"]).endswith(": crl fit --ckpt_path last")
    assert interrupted_message(["study", "--seeds", "0-4"]) == ("interrupted; finished runs are kept, and running "
                                                               "it again resumes: crl study --seeds 0-4")
    assert interrupted_message(["test", "-c", "c.yaml"]) == "interrupted; run it again: crl test -c c.yaml"


def _crl(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "CRL_TRACEBACK"} | {"OMP_NUM_THREADS": "1"}
    # SIGINT back to its default: a shell's background job (nohup ... &, some CI runners) inherits it ignored,
    # and a child whose SIGINT is ignored never sees the Ctrl-C this test sends
    return subprocess.Popen([sys.executable, "-m", "crl_lightning", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.mark.slow
def test_ctrl_c_ends_with_one_line_whose_command_resumes_quietly(tmp_path):
    args = ["fit", "--config", DIGITS, "--trainer.max_epochs", "2", "--trainer.default_root_dir", "runs",
            "--test_after_fit", "false", "--trainer.enable_progress_bar", "false"]
    fit = _crl(args, tmp_path)
    last = tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and fit.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    fit.send_signal(signal.SIGINT)  # Ctrl-C, during epoch 1
    stdout, stderr = fit.communicate(timeout=300)
    assert fit.returncode == 130, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert lines[-1] == f"crl: {interrupted_message(args)}" and "Detected KeyboardInterrupt" not in stderr
    assert "Traceback" not in stderr and "max_epochs=2` reached" not in stdout + stderr
    resume = lines[-1].rpartition(": crl ")[2].split()  # the printed command, run as printed
    resumed = _crl(resume, tmp_path)
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {last.relative_to(tmp_path)}" in stdout + stderr
    assert [line for line in stderr.splitlines() if WARNING_LINE.search(line)] == []  # no dirpath notice


@pytest.mark.usefixtures("plain_argv")
def test_a_wandb_run_prints_no_anonymous_notice(tmp_path, monkeypatch, capfd):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "disabled")  # wandb.init runs, offline, writing nothing
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    try:
        main(["fit", "--config", DIGITS, "--config", WANDB, "--trainer.default_root_dir", str(tmp_path),
              "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
              "--test_after_fit", "false", "--trainer.enable_progress_bar", "false"])
    finally:  # a disabled run left open would make the next test's wandb.init a no-op run too
        wandb.finish()
        wandb.teardown()
    err = capfd.readouterr().err
    assert "anonymous" not in err


def test_the_study_notices_are_hidden_and_others_are_not():
    """Guards against hiding too much: only the fingerprint-only notice goes, another missing callback is named."""
    import warnings

    from crl_lightning.console import quiet_console

    head = ("Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be provided "
            "during `Trainer` instantiation. Please add the following callbacks: ")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_console()
        warnings.warn("LightningCLI's args parameter is intended to run from within Python like if", stacklevel=1)
        warnings.warn(head + "['PairingFingerprint'].", stacklevel=1)
        warnings.warn(head + "['PairingFingerprint', 'MyCallback'].", stacklevel=1)
    assert [str(w.message) for w in caught] == [head + "['PairingFingerprint', 'MyCallback']."]


def test_study_help_says_95_percent_ci(capsys):
    with pytest.raises(SystemExit):
        main(["study", "--help"])
    assert "(95 % CI," in " ".join(capsys.readouterr().out.split())


def test_an_error_re_raised_from_a_dataloader_worker_reads_as_its_own_message():
    """torch re-raises a worker's error with the worker's whole traceback in its message; the line keeps the
    original message (without its type when this package defines it) and says which worker."""
    from torch._utils import ExceptionWrapper

    from crl_lightning.data.datasets import CorruptImageError

    lines = []
    for exc in (CorruptImageError("cannot decode image /d/a.png (OSError: image file is truncated)"),
                KeyError("boom")):
        try:
            raise exc
        except Exception:  # noqa: BLE001 -- wrapped as a DataLoader worker does
            wrapped = ExceptionWrapper(where="in DataLoader worker process 3")
        with pytest.raises(type(exc)) as raised:
            wrapped.reraise()
        lines.append(error_message(raised.value))
    assert lines == ["cannot decode image /d/a.png (OSError: image file is truncated) (in DataLoader worker process 3)",
                     "KeyError: 'boom' (in DataLoader worker process 3)"]
