"""pytest set-up: the flat modules at the repository root import by name in every test."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared, busy CPU, OpenMP barriers stall for seconds a step."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
