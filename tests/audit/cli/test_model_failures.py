"""The audited model's own code failing (issue 15, section 2): never exit 0, never a traceback.

Each case runs ``diffaudit audit`` as a subprocess on an ``entry:`` model from a temporary module. A
model that raises, calls ``sys.exit``, or returns ragged, complex or NaN output must end with ONE
``error:`` line naming the model and what went wrong, exit status 3 (neither 0 = pass nor 1 = a gate
failed nor 2 = a user mistake), no traceback unless ``DIFFAUDIT_DEBUG=1``, and no report folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from diffaudit.errors import DiffauditError, ModelError

MODULE = textwrap.dedent(
    """
    import sys

    import numpy as np

    from diffaudit.models.contract import DenoiserModel

    if "EXIT_ON_IMPORT" in __name__:
        sys.exit(0)


    def good(n, seed):
        return np.random.default_rng(seed).standard_normal((n, 8))


    def exits(n, seed):
        sys.exit(0)


    def exits_1(n, seed):
        sys.exit(1)


    def raises_runtime(n, seed):
        raise RuntimeError("boom in sample")


    def raises_value(n, seed):
        raise ValueError("no samples today")


    def raises_type_inside(n, seed):
        return None + 1  # a TypeError inside the model's code, not a wrong signature


    def ragged(n, seed):
        return [[0.0] * (8 if i % 2 else 7) for i in range(n)]


    def complex_out(n, seed):
        return good(n, seed) + 1j * good(n, seed + 1)


    def nan_out(n, seed):
        x = good(n, seed)
        x[3, 2] = np.nan
        return x


    def short(n, seed):
        return good(n - 1, seed)


    def three_args(n, seed, extra):
        return good(n, seed)


    def raising_factory():
        raise RuntimeError("factory broke")


    class _ExitsInFactory:
        def __init__(self):
            sys.exit(0)

        def sample(self, n, seed):
            return good(n, seed)


    exiting_factory = _ExitsInFactory


    class _NanDenoise:
        shape = (8,)

        def sample(self, n, seed):
            return good(n, seed)

        def denoise(self, x, sigma):
            return np.full_like(x, np.nan)


    def nan_denoise():
        return _NanDenoise()


    class _NanDenoiserModel(DenoiserModel):
        def __init__(self):
            super().__init__((8,), sigma_data=1.0, num_steps=4)

        def denoise(self, x, sigma):
            return np.full_like(x, np.nan)


    def nan_denoiser_model():
        return _NanDenoiserModel()
    """
)

GATE = "memorization.copy_rate<=0"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("model_failures")
    (d / "mods.py").write_text(MODULE)
    (d / "mods_EXIT_ON_IMPORT.py").write_text(MODULE)
    rng = np.random.default_rng(0)
    np.save(d / "train.npy", rng.standard_normal((60, 8)).astype(np.float32))
    np.save(d / "holdout.npy", rng.standard_normal((40, 8)).astype(np.float32))
    return d


def _audit(work, spec: str, out: str, *, gate: str = GATE, debug: bool = False):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(work), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("DIFFAUDIT_DEBUG", None)
    if debug:
        env["DIFFAUDIT_DEBUG"] = "1"
    argv = ["--model", spec, "--train", "train.npy", "--holdout", "holdout.npy", "--n-samples", "40"]
    argv += ["--gate", gate, "--out", out]
    cmd = [sys.executable, "-m", "diffaudit", "audit", "--no-progress", *argv]
    return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)


def _assert_model_failure(work, r, spec: str, out: str, *expected: str) -> None:
    assert r.returncode == ModelError.exit_code == 3, (r.returncode, r.stderr)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr
    assert f"model {spec}" in errors[0], errors[0]
    for text in expected:
        assert text in errors[0], errors[0]
    assert "Traceback" not in r.stderr + r.stdout
    # no report, and no half-written temporary folder next to where it would have gone
    assert not (work / out).exists()
    assert not [p for p in work.iterdir() if p.name.startswith(f".{out}")]


CASES = [
    ("exits", "sys.exit(0)"),
    ("exits_1", "sys.exit(1)"),
    ("raises_runtime", "RuntimeError: boom in sample"),
    ("raises_value", "ValueError: no samples today"),
    ("raises_type_inside", "TypeError"),
    ("ragged", "not one array"),
    ("complex_out", "complex"),
    ("nan_out", "NaN or Inf in 1 of 40"),
    ("short", "returned 39 samples when asked for 40"),
    ("raising_factory", "RuntimeError: factory broke"),
    ("exiting_factory", "sys.exit(0)"),
    ("nan_denoise", "denoise(x, sigma) returned NaN"),
    ("nan_denoiser_model", "NaN"),
]


@pytest.mark.parametrize(("attr", "expected"), CASES, ids=[c[0] for c in CASES])
def test_model_code_failure_exits_3_with_one_error_line(work, attr, expected):
    spec = f"entry:mods:{attr}"
    r = _audit(work, spec, f"out-{attr}")
    _assert_model_failure(work, r, spec, f"out-{attr}", expected)


def test_module_exiting_on_import_is_the_models_failure(work):
    spec = "entry:mods_EXIT_ON_IMPORT:good"
    r = _audit(work, spec, "out-import")
    _assert_model_failure(work, r, spec, "out-import", "importing 'mods_EXIT_ON_IMPORT' called sys.exit(0)")


def test_debug_env_shows_the_models_traceback(work):
    r = _audit(work, "entry:mods:raises_runtime", "out-debug", debug=True)
    assert r.returncode == 3
    assert "Traceback" in r.stderr and 'raise RuntimeError("boom in sample")' in r.stderr
    assert r.stderr.rstrip().splitlines()[-1].startswith("error: model entry:mods:raises_runtime")
    assert not (work / "out-debug").exists()


def test_wrong_signature_is_a_user_mistake_not_a_model_failure(work):
    r = _audit(work, "entry:mods:three_args", "out-sig")
    assert r.returncode == DiffauditError.exit_code == 2, r.stderr
    assert "sample(n, seed)" in r.stderr and "Traceback" not in r.stderr
    assert not (work / "out-sig").exists()


def test_a_working_model_still_passes_and_fails_gates(work):
    """The other side: the same harness exits 0 with a report when the gate holds, 1 when it does not."""
    ok = _audit(work, "entry:mods:good", "out-good", gate="memorization.copy_rate<=1")
    assert ok.returncode == 0, ok.stderr
    assert (work / "out-good" / "report.json").is_file()
    bad = _audit(work, "entry:mods:good", "out-good-fail", gate="convergence.fd<=-1")
    assert bad.returncode == 1, bad.stderr
    assert (work / "out-good-fail" / "report.json").is_file()
