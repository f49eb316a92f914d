"""Fixtures shared by the test modules (the writers of fixture data are functions in ``data_fixtures.py``)."""

from __future__ import annotations

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
