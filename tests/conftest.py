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


@pytest.fixture(params=[8, 16])
def lanes(request):
    """native.c's passes bound by their arithmetic in both their forms: 8 lanes (every x86 CPU it runs on) and 16
    (CPUs with AVX-512); skipped where native.c does not run, and for 16 where the CPU has no AVX-512."""
    from clozelm.model import native

    if not native.usable():
        pytest.skip("native.c's kernels run on x86 CPUs with AVX2 and FMA")
    lib = native.library()
    if lib.clozelm_set_lanes(request.param) != request.param:
        lib.clozelm_set_lanes(16)
        pytest.skip("no AVX-512 on this CPU")
    yield request.param
    lib.clozelm_set_lanes(16)
