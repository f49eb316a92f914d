"""Fixtures shared by the test modules (the writers of fixture data are functions in ``data_fixtures.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run the test with one intra-op thread (tiny CPU models; avoids OpenMP spin-waits on a busy host)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def plain_argv(monkeypatch):
    """A bare ``sys.argv``: LightningCLI warns when pytest's own arguments are present beside ``args``."""
    monkeypatch.setattr("sys.argv", ["crl"])


@pytest.fixture
def saved_figures(monkeypatch):
    """File name -> the matplotlib Figure written to it, for every figure `crl_lightning.figures` saves in the test."""
    from crl_lightning import figures

    saved = {}
    save = figures.save_figure

    def capture(fig, path):
        saved[Path(path).name] = fig
        return save(fig, path)

    monkeypatch.setattr(figures, "save_figure", capture)
    return saved
