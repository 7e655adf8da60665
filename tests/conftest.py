import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _malloc_as_it_is(monkeypatch):
    """`clozelm train` and `study` run in process here: their memory setting would stay for every later test."""
    from clozelm.training import runner
    monkeypatch.setattr(runner, "reuse_freed_memory", lambda: False)


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread, and far faster when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
