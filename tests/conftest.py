import os

import numpy as np
import pytest

# Keep every test's caches inside its own temporary folder, never the user's ~/.cache.
@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DIFFAUDIT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def pytest_configure(config):
    os.environ.setdefault("OMP_NUM_THREADS", "2")
