"""Shared fixtures of the app tests."""

import sys

import pytest


@pytest.fixture(autouse=True)
def _restore_main_module():
    """``AppTest`` runs a page as ``__main__`` and leaves it in ``sys.modules``; a later test that starts spawn
    workers would then make every child re-run that page (and die on it). Put the real ``__main__`` back."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main
