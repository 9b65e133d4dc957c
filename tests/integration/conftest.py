"""Shared fixtures of the integration tests (they train tiny models with torch)."""

import pytest


@pytest.fixture(scope="module")
def one_thread():
    """Nano models gain nothing from intra-op threads, and on a shared 2-core machine two
    OpenMP threads per process spin against other jobs (measured 5-10x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
