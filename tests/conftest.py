import os

import numpy as np
import pytest


@pytest.fixture(scope="session")
def session_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("diffaudit-cache")


# Keep the suite's caches (features, indexes, the sprites oracle) in one folder of this test session,
# never the user's ~/.cache; tests that need an empty cache pass their own cache_dir.
@pytest.fixture(autouse=True)
def _isolated_cache(session_cache_dir, monkeypatch):
    monkeypatch.setenv("DIFFAUDIT_CACHE_DIR", str(session_cache_dir))
    yield


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for the test, restored after: tiny models and tensors, where a second OpenMP thread
    only adds synchronisation (ms per op on a shared 2-core machine). Use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    """(path, pipeline, legacy tokenizer folder) of a tiny random Stable Diffusion pipeline (tests/sd_tiny.py)."""
    from sd_tiny import build_tiny_sd

    return build_tiny_sd(tmp_path_factory)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def pytest_configure(config):
    os.environ.setdefault("OMP_NUM_THREADS", "2")
