"""Faults injected into ``crl``: a full disk while writing, two commands on one study/cv folder, a YAML syntax
error in a config, SIGKILL at random moments of a study (`benchmarks/chaos_study.py`, 3 kills here).

Each test fails on the code before issue 23: checkpoints were written through the system temp folder (a copy,
not a rename), text files through a buffered ``write`` (no `DiskFullError`), study folders had no lock, and a
YAML error named ``"<unicode string>"``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from crl_lightning import study
from crl_lightning.cli import (
    ConfigError,
    _with_atomic_checkpoints,
    build_cli,
    check_checkpoint,
    main,
    resolve_ckpt_path,
)
from crl_lightning.console import error_message
from crl_lightning.runs import (
    LOCK_FILENAME,
    TEMP_SUFFIX,
    AtomicCheckpointIO,
    DiskFullError,
    FolderLockedError,
    files,
    folder_lock,
    newest_last_checkpoint,
    write_json,
)

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "examples" / "configs" / "digits_crl.yaml")
ADIENCE = str(ROOT / "examples" / "configs" / "adience_age_crl.yaml")
FIT = ["fit", "--config", DIGITS, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2",
       "--trainer.limit_val_batches", "1", "--test_after_fit", "false", "--trainer.enable_progress_bar", "false"]


def _temporary_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(f".*{TEMP_SUFFIX}")]


@pytest.fixture
def disk_full_at(monkeypatch):
    """``disk_full_at(text)``: ``os.write`` to a temporary file whose name contains ``text`` writes a part, then
    raises ``OSError(ENOSPC)``, as a full disk does; other writes go through."""
    names: dict[int, str] = {}
    mkstemp, write = files.tempfile.mkstemp, os.write

    def recording_mkstemp(*args, **kwargs):
        fd, name = mkstemp(*args, **kwargs)
        names[fd] = name
        return fd, name

    def arm(text: str) -> None:
        def full_write(fd, data):
            if text in names.get(fd, ""):
                write(fd, bytes(data[: len(data) // 2]))
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return write(fd, data)

        monkeypatch.setattr(files.tempfile, "mkstemp", recording_mkstemp)
        monkeypatch.setattr(os, "write", full_write)

    return arm


def test_a_full_disk_leaves_the_old_file_and_no_temporary_one(tmp_path, disk_full_at):
    path = write_json(tmp_path / "test_metrics.json", {"metrics": {"test_top1_err": 1.0}})
    disk_full_at("test_metrics.json")
    with pytest.raises(DiskFullError) as raised:
        write_json(path, {"metrics": {"test_top1_err": 2.0}, "pad": "x" * 5000})
    assert json.loads(path.read_text()) == {"metrics": {"test_top1_err": 1.0}}  # the old file, whole
    assert not _temporary_files(tmp_path)
    line = error_message(raised.value)
    assert re.fullmatch(rf"no space left on device to write test_metrics.json in {re.escape(str(tmp_path))}: "
                        r"[\d.]+ [kMGT]?B(ytes)? free, 5\.\d kB needed; the earlier files are kept: .*"
                        r"--ckpt_path last\)",
                        line), line
    assert raised.value.errno == errno.ENOSPC and raised.value.needed > 5000


@pytest.mark.usefixtures("plain_argv", "one_thread")
def test_a_full_disk_at_a_checkpoint_keeps_the_earlier_ones_and_resumes_from_the_last(tmp_path, disk_full_at):
    disk_full_at("epoch=1-")  # the second epoch's checkpoint finds the disk full
    with pytest.raises(DiskFullError) as raised:
        main([*FIT, "--trainer.default_root_dir", str(tmp_path)])
    folder = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=0-step=2.ckpt", "last.ckpt"]  # no partial file
    for path in folder.iterdir():
        check_checkpoint(path)
    assert torch.load(folder / "last.ckpt", weights_only=False)["global_step"] == 2
    assert error_message(raised.value).startswith(f"no space left on device to write epoch=1-step=4.ckpt in {folder}: ")
    assert resolve_ckpt_path("last", tmp_path) == str(folder / "last.ckpt")


def _namespace_with_tmpfs() -> bool:
    """Whether ``unshare -rm`` can mount a tmpfs here (a user and mount namespace: no root, nothing left behind)."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    done = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                          capture_output=True, check=False)
    return done.returncode == 0


#: Run inside the namespace: mount a tmpfs of SIZE at DIR, run crl fit there, report what is left as JSON.
_ON_TMPFS = textwrap.dedent("""
    import json, subprocess, sys, zipfile
    from pathlib import Path
    folder, size, *command = sys.argv[1:]
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", folder], check=True)
    done = subprocess.run(command, capture_output=True, text=True, cwd=folder)
    def complete(path):
        try:
            with zipfile.ZipFile(path) as archive:
                return archive.testzip() is None
        except (zipfile.BadZipFile, OSError, EOFError):
            return False
    files = {str(p.relative_to(folder)): complete(p) if p.suffix == ".ckpt" else None
             for p in Path(folder).rglob("*") if p.is_file()}
    print(json.dumps({"rc": done.returncode, "stderr": done.stderr, "files": files}))
""")


@pytest.mark.skipif(not _namespace_with_tmpfs(), reason="needs `unshare -rm` and a tmpfs mount")
def test_a_crl_fit_on_a_full_tmpfs_ends_with_one_line_and_leaves_only_complete_checkpoints(tmp_path):
    (tmp_path / "disk").mkdir()
    command = [sys.executable, "-m", "crl_lightning", *FIT, "--trainer.max_epochs", "3",
               "--trainer.default_root_dir", "run"]
    env = {k: v for k, v in os.environ.items() if k != "CRL_TRACEBACK"} | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(["unshare", "-rm", sys.executable, "-c", _ON_TMPFS, str(tmp_path / "disk"), "6m", *command],
                          capture_output=True, text=True, env=env, timeout=600, check=True)
    report = json.loads(done.stdout)
    checkpoints = {name: ok for name, ok in report["files"].items() if name.endswith(".ckpt")}
    assert report["rc"] == 1, report["stderr"][-3000:]
    assert checkpoints == {"run/lightning_logs/version_0/checkpoints/epoch=0-step=2.ckpt": True,
                           "run/lightning_logs/version_0/checkpoints/last.ckpt": True}, report["files"]
    assert not [name for name in report["files"] if name.endswith(TEMP_SUFFIX)]
    lines = [line for line in report["stderr"].splitlines() if line.startswith("crl: error:")]
    assert lines == [report["stderr"].splitlines()[-1]]
    assert re.match(r"crl: error: no space left on device to write epoch=1-step=4.ckpt in run/lightning_logs/"
                    r"version_0/checkpoints: [\d.]+ [kM]?B(ytes)? free, 2\.\d MB needed", lines[0]), lines[0]


def test_ckpt_path_last_resumes_from_the_newest_complete_checkpoint(tmp_path, caplog):
    files_ = [tmp_path / "lightning_logs" / f"version_{v}" / "checkpoints" / "last.ckpt" for v in range(2)]
    for k, path in enumerate(files_):
        path.parent.mkdir(parents=True)
        torch.save({"global_step": k, "w": torch.zeros(1000)}, path)
        os.utime(path, (1000 + k, 1000 + k))
    files_[1].write_bytes(files_[1].read_bytes()[:1500])  # the newest, cut short by an older writer
    os.utime(files_[1], (2000, 2000))
    assert newest_last_checkpoint(tmp_path) == files_[0]
    assert f"skipping {files_[1]}" in caplog.text and "truncated or corrupt" in caplog.text


def test_crl_installs_atomic_checkpoints_unless_a_checkpoint_io_is_configured():
    from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO

    mine = TorchCheckpointIO()
    assert [type(p) for p in _with_atomic_checkpoints({"accelerator": "cpu"})] == [AtomicCheckpointIO]
    assert _with_atomic_checkpoints({"accelerator": "cpu", "plugins": [mine]}) == [mine]
    assert len(_with_atomic_checkpoints({"accelerator": "cpu", "plugins": AsyncCheckpointIO()})) == 1


@pytest.mark.usefixtures("plain_argv", "one_thread")
def test_crl_fit_writes_its_checkpoints_with_atomic_checkpoint_io(tmp_path):
    run = build_cli([*FIT, "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path)])
    assert isinstance(run.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    last = newest_last_checkpoint(tmp_path)
    assert last is not None and torch.load(last, weights_only=False)["global_step"] == 2
    assert not _temporary_files(tmp_path)


def _holder_process(folder: Path) -> subprocess.Popen:
    """Another process holding the lock on ``folder`` until its stdin closes; returns once it holds it."""
    code = ("import sys; from crl_lightning.runs import folder_lock\n"
            f"with folder_lock({str(folder)!r}, 'crl study'):\n    print('locked', flush=True); sys.stdin.read()")
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


@pytest.mark.parametrize("command", ["study", "cv"])
def test_a_second_command_on_a_locked_folder_is_refused_naming_the_holder(tmp_path, monkeypatch, command):
    def no_training(*args, **kwargs):
        raise AssertionError("trained in a folder another command holds")

    monkeypatch.setattr(study, "run_study", no_training)
    monkeypatch.setattr("crl_lightning.cv.run_cv", no_training)
    holder = _holder_process(tmp_path / "out")
    try:
        record = json.loads((tmp_path / "out" / LOCK_FILENAME).read_text())
        args = (["study", "--config", DIGITS, "--criteria", "crl", "ce", "--seeds", "0", "--out", str(tmp_path / "out")]
                if command == "study" else
                ["cv", "--config", ADIENCE, "--folds", "0", "--trainer.default_root_dir", str(tmp_path / "out")])
        with pytest.raises(FolderLockedError) as raised:
            main(args)
    finally:
        holder.communicate("", timeout=60)
    assert record["pid"] == holder.pid and record["host"] == socket.gethostname()
    assert error_message(raised.value) == (
        f"{tmp_path / 'out'}: expected a folder no other command is using, got one locked by crl study (host "
        f"{record['host']}, pid {holder.pid}, started {record['started']}); wait for it to end, or delete "
        f"{tmp_path / 'out' / LOCK_FILENAME} if that process is gone")
    assert holder.returncode == 0 and not (tmp_path / "out" / LOCK_FILENAME).exists()  # released by its holder


def test_a_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, capsys):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    lock = tmp_path / LOCK_FILENAME
    stale = {"host": socket.gethostname(), "pid": finished.pid, "started": "2026-12-07T01:00:00+00:00"}
    lock.write_text(json.dumps(stale))
    with folder_lock(tmp_path, "crl study") as held:
        assert json.loads(held.read_text())["pid"] == os.getpid()
    assert not lock.exists() and not _temporary_files(tmp_path)
    assert capsys.readouterr().err == (f"crl: warning: taking over the stale lock {lock} (pid {finished.pid} on "
                                       f"{stale['host']}, started 2026-12-07T01:00:00+00:00, is not running)\n")
    lock.write_text(json.dumps({**stale, "host": "elsewhere"}))  # another host's process cannot be checked: refused
    with pytest.raises(FolderLockedError, match="locked by crl \\(host elsewhere"):
        with folder_lock(tmp_path):
            pass
    assert lock.exists()


@pytest.mark.usefixtures("plain_argv")
@pytest.mark.parametrize("command", ["fit", "study", "study --criteria", "cv"])
def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path, command, capsys):
    """Guards against jsonargparse's ``"<unicode string>"`` for a YAML error, on every way a config file enters:
    ``--config`` of fit/study/cv, and a criterion overlay of ``crl study --criteria`` (checked before any run)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_epochs: 2\n   devices: 1\n")
    expected = (f"{bad}, line 3, column 11: expected a YAML config, got a syntax error: "
                "mapping values are not allowed here")
    study = ["study", "--seeds", "0", "--out", str(tmp_path / "s")]
    args = {"fit": ["fit", "--config", DIGITS, "--config", str(bad)],
            "study": [*study, "--criteria", "crl", "--config", DIGITS, "--config", str(bad)],
            "study --criteria": [*study, "--criteria", "ce", str(bad), "--config", DIGITS],
            "cv": ["cv", "--config", DIGITS, "--config", str(bad)]}[command]
    if command == "study --criteria":  # an argparse error of `crl study` (exit 2), the message on stderr
        with pytest.raises(SystemExit) as exited:
            main(args)
        assert exited.value.code == 2 and capsys.readouterr().err.strip().endswith(expected)
    else:
        with pytest.raises(ConfigError) as raised:
            main(args)
        assert error_message(raised.value) == expected
    assert not (tmp_path / "s").exists()  # nothing trained


@pytest.mark.slow
def test_a_study_killed_three_times_gives_the_uninterrupted_results(tmp_path):
    start = time.monotonic()
    # the default delays (start-up + at most 0.8 x the clean study's work / kills): every kill lands before it ends,
    # on a fast machine as on a loaded one (fixed delays of 6-16 s let a quiet machine finish after one kill)
    command = [sys.executable, str(ROOT / "benchmarks" / "chaos_study.py"), "--kills", "3", "--seeds", "1",
               "--epochs", "2", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = dict(re.findall(r"^\| (.+?) \| (\S+) \|$", done.stdout, re.M))
    assert table["kills survived (SIGKILL at a random moment)"] == "3"
    assert table["files found truncated"] == "0" and table["metrics different from the uninterrupted study"] == "0"
    assert int(table["result files checked between restarts"]) > 0
    assert time.monotonic() - start < 600
