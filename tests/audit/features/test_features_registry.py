"""The feature-space registry: spec parsing errors name the fix; importing the package stays free of torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

import diffaudit.features as features
from diffaudit.errors import DiffauditError
from diffaudit.features import EMBEDDERS, available_embedders, get_embedder


def test_available_forms_cover_exactly_the_registered_names():
    assert sorted({form.split(":")[0] for form in available_embedders()}) == sorted(EMBEDDERS)


def test_every_public_name_is_exported():
    missing = [name for name in features.__all__ if not hasattr(features, name)]
    assert missing == []


@pytest.mark.parametrize(
    "spec, message",
    [
        ("vgg", "unknown feature space 'vgg'; choose one of: pixels, pixels:K"),
        ("inception:v4", "write 'inception', 'inception:fid' or 'inception:torchvision'"),
        ("clip", "name the open_clip architecture, e.g. 'clip:ViT-B-32'"),
        ("oracle:x", "oracle takes no argument"),
        ("dinov2:vitz99", "unknown architecture; pick one of vits14"),
    ],
)
def test_bad_specs_name_the_fix(spec, message):
    with pytest.raises(DiffauditError, match=message):
        get_embedder(spec, device="cpu", random_init=spec != "oracle:x")


def test_spec_is_case_and_space_tolerant_in_the_name():
    assert get_embedder("  PIXELS:4 ").id == get_embedder("pixels:4").id == "pixels:4:area"


def test_import_does_not_load_torch():
    code = "import sys, diffaudit.features; print(sorted(m for m in ('torch', 'torchvision', 'open_clip') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    # control: building a network embedder and embedding does load torch
    code = (
        "import sys, numpy as np, diffaudit.features as f; "
        "f.get_embedder('pixels:3').embed(np.zeros((1, 1, 7, 7), np.float32)); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
