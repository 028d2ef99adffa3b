"""Shared fixtures (no tests/__init__.py: modules import helpers like mp_reference by name)."""

import os

import pytest
import torch
from hypothesis import settings

# CI (CI=true) draws the same examples on every run, so a landing never depends on a lucky draw;
# local runs keep hypothesis's random search, which is how new edge cases are found.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one torch thread, and CI's 2 cores run two pytest workers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
