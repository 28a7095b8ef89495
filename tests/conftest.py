import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test runs on one torch thread: tiny problems on a busy 2-core machine stall with two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
