"""The thread policy (diffaudit.threads): CPUs from affinity and cgroup quota, precedence, env vars."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from diffaudit import threads as th
from diffaudit.errors import DiffauditError
from diffaudit.sweeps.executors import worker_threads

ENV_KEYS = (th.ENV_VAR, th.NUMPY_BLAS_ENV_VAR, "OMP_WAIT_POLICY", *th.THREAD_ENV_VARS)


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    env.update(extra)
    return env


def _py(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_clean_env(**env))


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity (Linux)")
def test_available_cpus_respects_affinity():
    first = min(os.sched_getaffinity(0))
    code = (
        f"import os; os.sched_setaffinity(0, {{{first}}}); "
        "from diffaudit.threads import available_cpus; print(available_cpus())"
    )
    r = _py(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1"
    assert th.available_cpus() <= len(os.sched_getaffinity(0))


def test_cgroup_quota_v2_and_v1(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert th._cgroup_quota_cpus(tmp_path) == 2  # 1.5 CPUs rounds up
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert th._cgroup_quota_cpus(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert th._cgroup_quota_cpus(tmp_path) == 3
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert th._cgroup_quota_cpus(tmp_path) is None


def test_resolve_threads_precedence(monkeypatch):
    monkeypatch.delenv(th.ENV_VAR, raising=False)
    assert th.resolve_threads() == th.available_cpus()
    monkeypatch.setenv(th.ENV_VAR, "3")
    assert th.resolve_threads() == 3
    assert th.resolve_threads(5) == 5
    for bad in ("0", "-2", "abc", "1.5"):
        monkeypatch.setenv(th.ENV_VAR, bad)
        with pytest.raises(DiffauditError, match=th.ENV_VAR):
            th.resolve_threads()
    with pytest.raises(DiffauditError, match="--threads"):
        th.resolve_threads(0)


def test_training_threads_break_even():
    assert th.training_threads(th.SINGLE_THREAD_BELOW_FLOPS / 2, 4) == 1
    assert th.training_threads(th.SINGLE_THREAD_BELOW_FLOPS * 2, 4) == 4
    # the 3x256 MLP at batch 256 (d = 32) is below the break-even: ~6 x 150k params x 256
    params = 32 * 256 + 256 * 256 * 2 + 256 * 32
    assert th.training_threads(6.0 * params * 256, 2) == 1


def test_workers_times_threads_within_cpus():
    for cpus in (1, 2, 3, 8, 64):
        for workers in range(1, cpus + 1):
            t = th.threads_per_worker(workers, cpus)
            assert t >= 1 and workers * t <= cpus
            assert workers * (t + 1) > cpus  # and uses them: one more thread each would exceed them
    assert worker_threads(4, 3) == 3
    assert worker_threads(1) == th.available_cpus()


POLICY = (
    "import json, os, sys; from diffaudit.threads import apply_thread_policy; "
    "assert 'torch' not in sys.modules; apply_thread_policy({n}); "
    "print(json.dumps({{k: os.environ.get(k) for k in {keys!r}}}))"
)


def test_policy_sets_env_vars_in_subprocess():
    keys = ["OMP_WAIT_POLICY", *th.THREAD_ENV_VARS]
    r = _py(POLICY.format(n=3, keys=keys))
    assert r.returncode == 0, r.stderr
    env = json.loads(r.stdout)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE", **{k: "3" for k in th.THREAD_ENV_VARS}}
    # the user's own settings are kept
    r = _py(POLICY.format(n=3, keys=keys), OMP_NUM_THREADS="1", OMP_WAIT_POLICY="ACTIVE")
    env = json.loads(r.stdout)
    assert env["OMP_NUM_THREADS"] == "1" and env["OMP_WAIT_POLICY"] == "ACTIVE"
    assert env["MKL_NUM_THREADS"] == "3"


def test_policy_sets_torch_threads_when_imported():
    r = _py(
        "import torch; from diffaudit.threads import apply_thread_policy; apply_thread_policy(1); "
        "print(torch.get_num_threads())"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1"


BLAS_PROBE = (
    "import json, faiss; from diffaudit.threads import apply_thread_policy; apply_thread_policy(2); "
    "from threadpoolctl import threadpool_info; "
    "print(json.dumps([[i['filepath'], i.get('threading_layer'), i['num_threads']] for i in threadpool_info() "
    "if i['internal_api'] == 'openblas']))"
)


def test_numpy_and_scipy_blas_get_one_thread_faiss_keeps_the_policy():
    # numpy's and scipy's OpenBLAS (pthreads layer) synchronise on every small call: one thread by default
    # (diffaudit.threads); FAISS's OpenBLAS (OpenMP layer, passive wait) keeps the policy's count
    r = _py(BLAS_PROBE)
    assert r.returncode == 0, r.stderr
    libs = json.loads(r.stdout)
    pthreads = [n for path, layer, n in libs if layer == "pthreads"]
    assert len(pthreads) >= 1 and all(n == 1 for n in pthreads), libs
    assert any("numpy" in path for path, layer, _ in libs if layer == "pthreads"), libs
    faiss_libs = [n for path, layer, n in libs if "faiss" in path]
    assert faiss_libs and all(n == 2 for n in faiss_libs), libs
    # the environment variable raises it
    libs = json.loads(_py(BLAS_PROBE, **{th.NUMPY_BLAS_ENV_VAR: "2"}).stdout)
    assert all(n == 2 for _, layer, n in libs if layer == "pthreads"), libs


# The CLI applies the policy while parsing the group's options, before any subcommand imports torch.
CLI_PROBE = (
    "import json, os, sys; from diffaudit.cli import cli; "
    "cli.main(args=sys.argv[1:] + ['thresholds', '--help'], prog_name='diffaudit', standalone_mode=False); "
    "print(json.dumps({k: os.environ.get(k) for k in ('OMP_NUM_THREADS', 'OMP_WAIT_POLICY')}))"
)


def _cli_env(*args, **env) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", CLI_PROBE, *args], capture_output=True, text=True, env=_clean_env(**env)
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_cli_threads_option_and_env_precedence():
    assert _cli_env() == {"OMP_NUM_THREADS": str(th.available_cpus()), "OMP_WAIT_POLICY": "PASSIVE"}
    assert _cli_env(**{th.ENV_VAR: "3"})["OMP_NUM_THREADS"] == "3"
    assert _cli_env("--threads", "2", **{th.ENV_VAR: "3"})["OMP_NUM_THREADS"] == "2"
    # an explicit --threads replaces a stale OMP_NUM_THREADS; without it the user's value is kept
    assert _cli_env("--threads", "2", OMP_NUM_THREADS="7")["OMP_NUM_THREADS"] == "2"
    assert _cli_env(OMP_NUM_THREADS="7")["OMP_NUM_THREADS"] == "7"


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--threads", "0", "train", "--help"], {}, "--threads"),
        (["--threads", "x", "train", "--help"], {}, "--threads"),
        (["train", "--help"], {th.ENV_VAR: "0"}, th.ENV_VAR),
        (["train", "--help"], {th.ENV_VAR: "two"}, th.ENV_VAR),
        (["train", "--help"], {th.NUMPY_BLAS_ENV_VAR: "0"}, th.NUMPY_BLAS_ENV_VAR),
    ],
)
def test_cli_invalid_threads_one_error_line_exit_2(args, env, needle):
    r = subprocess.run(
        [sys.executable, "-m", "diffaudit", *args], capture_output=True, text=True, env=_clean_env(**env)
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    assert "Traceback" not in r.stderr


def test_python_api_set_threads_and_the_report_records_the_settings():
    # a notebook: set_threads() first (before torch loads), then an audit whose report.json says what it ran with
    code = (
        "import json, diffaudit; n = diffaudit.set_threads(1); import torch; "
        "r = diffaudit.audit('control:gaussian', dataset='hidden-manifold:d=4', n_train=64, n_samples=64, "
        "max_calibration=64); "
        "print(json.dumps({'n': n, 'torch': torch.get_num_threads(), 'inputs': r['inputs']['threads']}))"
    )
    r = _py(code)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["n"] == 1 and out["torch"] == 1
    assert out["inputs"]["torch"] == 1 and out["inputs"]["omp_wait_policy"] == "PASSIVE"
    assert out["inputs"]["cpus_available"] == th.available_cpus()
    with pytest.raises(DiffauditError, match="--threads"):
        import diffaudit

        diffaudit.set_threads(0)
