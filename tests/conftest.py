"""Shared fixtures (no tests/__init__.py: modules import helpers like mp_reference by name)."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one torch thread, and CI's 2 cores run two pytest workers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
