"""The training harness (issue 6 §1-2): EDM formulas, networks, the trainer, checkpoints, the
vectorised trainer against the sequential one, and the train CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from diffaudit.errors import DiffauditError
from diffaudit.harness.checkpoint import load_checkpoint, save_checkpoint
from diffaudit.harness.edm import (
    P_MEAN,
    P_STD,
    EDMPrecond,
    draw_sigma_noise,
    edm_coefficients,
    edm_loss,
    edm_weight,
)
from diffaudit.harness.networks import MLPDenoiser, UNet, build_network, parse_model_spec
from diffaudit.harness.train import TrainConfig, init_network, train
from diffaudit.harness.vmap import train_many
from diffaudit.models.checkpoint import CheckpointModel

TINY = "mlp:width=32,depth=2,emb_dim=16"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def gaussian_2d(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    A = np.array([[1.0, 0.0], [0.8, 0.5]])
    mu = np.array([1.0, -0.5])
    x = np.random.default_rng(seed).standard_normal((n, 2)) @ A.T + mu
    return x.astype(np.float32), mu, A @ A.T


# --- EDM formulas ----------------------------------------------------------------------------------


def test_preconditioning_matches_table1():
    sd = 0.7
    s = np.array([0.002, 0.1, 0.7, 3.0, 80.0])
    c_skip, c_out, c_in, c_noise = (t.numpy() for t in edm_coefficients(torch.tensor(s), sd))
    np.testing.assert_allclose(c_skip, sd**2 / (s**2 + sd**2), rtol=1e-12)
    np.testing.assert_allclose(c_out, s * sd / np.sqrt(s**2 + sd**2), rtol=1e-12)
    np.testing.assert_allclose(c_in, 1 / np.sqrt(s**2 + sd**2), rtol=1e-12)
    np.testing.assert_allclose(c_noise, np.log(s) / 4, rtol=1e-12)
    w = edm_weight(torch.tensor(s), sd).numpy()
    np.testing.assert_allclose(w, (s**2 + sd**2) / (s * sd) ** 2, rtol=1e-12)
    np.testing.assert_allclose(w, 1 / c_out**2, rtol=1e-12)  # lambda = 1 / c_out^2 (EDM Eq. 8)

    class Probe(torch.nn.Module):  # F(x_in, c_noise) = 2 x_in + c_noise: checks what F receives
        def forward(self, x_in, c_noise):
            return 2 * x_in + c_noise[:, None]

    x = torch.randn(5, 3, dtype=torch.float64)
    D = EDMPrecond(Probe(), sd)(x, torch.tensor(s)).numpy()
    xs = x.numpy()
    ref = c_skip[:, None] * xs + c_out[:, None] * (2 * c_in[:, None] * xs + c_noise[:, None])
    np.testing.assert_allclose(D, ref, rtol=1e-12)


def test_zero_network_has_unit_weighted_loss_on_gaussian_data():
    # For data N(0, sd^2) and F = 0: D = c_skip (x + s n), and lambda E|D - x|^2 = 1 exactly at every
    # sigma (Karras 2022, App. B.6: the weighting makes the effective target unit-variance). Each
    # term is chi^2_1, so the mean over N = 32768 terms has std sqrt(2/N) = 0.008; tolerance 5 std.
    class Zero(torch.nn.Module):
        def forward(self, x_in, c_noise):
            return torch.zeros_like(x_in)

    sd = 2.5
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 8, generator=torch.Generator().manual_seed(1)) * sd
    loss = float(edm_loss(EDMPrecond(Zero(), sd), x, g))
    assert abs(loss - 1.0) < 0.04


def test_sigma_is_lognormal_scaled_to_sigma_data():
    sd = 1.5
    sigma, noise = draw_sigma_noise(torch.Generator().manual_seed(0), 100_000, (3,), sd)
    z = torch.log(sigma / (sd / 0.5)).double().numpy()
    # mean of 1e5 normals: std 1.2/316 = 0.004; std estimate: std 1.2/447 = 0.003. Tolerance ~5 std.
    assert abs(z.mean() - P_MEAN) < 0.02 and abs(z.std() - P_STD) < 0.015
    assert noise.shape == (100_000, 3) and abs(float(noise.std()) - 1) < 0.01


# --- networks and specs ----------------------------------------------------------------------------


def test_model_spec_parsing_and_errors():
    cfg = parse_model_spec("mlp:width=64,depth=3")
    assert cfg.kind == "mlp" and cfg.params["width"] == 64 and cfg.params["depth"] == 3
    assert parse_model_spec(cfg.spec) == cfg  # canonical spec round-trips
    net = build_network(cfg, (5,))
    assert isinstance(net, MLPDenoiser) and len(net.layers) == 3
    with pytest.raises(DiffauditError, match="valid parameters: width, depth, emb_dim"):
        parse_model_spec("mlp:widht=64")
    with pytest.raises(DiffauditError, match="choose one of"):
        parse_model_spec("transformer:width=3")
    with pytest.raises(DiffauditError, match="not a valid int"):
        parse_model_spec("mlp:width=abc")
    with pytest.raises(DiffauditError, match="vector data"):
        build_network("mlp", (3, 16, 16))
    with pytest.raises(DiffauditError, match="levels"):
        build_network("unet:channels=8,levels=4", (1, 16, 16))  # 16 -> 2 px at the bottom
    with pytest.raises(DiffauditError, match="multiple of 8"):
        build_network("unet:channels=12", (1, 16, 16))


@pytest.mark.parametrize("size", [16, 32])
@pytest.mark.parametrize("attention", [False, True])
def test_unet_shapes(size, attention):
    net = build_network(f"unet:channels=8,levels=3,attention={str(attention).lower()}", (3, size, size))
    assert isinstance(net, UNet)
    assert any(type(m).__name__ == "SelfAttention" for m in net.modules()) == attention
    x = torch.randn(2, 3, size, size)
    out = EDMPrecond(net, 0.5)(x, torch.tensor([0.1, 5.0]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_unet_trains_a_few_steps():
    x = np.random.default_rng(0).uniform(-1, 1, (16, 1, 16, 16)).astype(np.float32)
    cfg = TrainConfig(steps=4, batch=4, log_every=1, warmup_steps=0, device="cpu")
    res = train(x, "unet:channels=8,levels=2,attention=true", cfg, progress=False)
    init = init_network(parse_model_spec("unet:channels=8,levels=2,attention=true"), (1, 16, 16), 0)
    with torch.no_grad():
        moved = max(
            float((a - b).abs().max())
            for a, b in zip(res.net.net.parameters(), init.parameters(), strict=True)
        )
    assert len(res.stats) == 4 and all(math.isfinite(s["loss"]) for s in res.stats)
    assert moved > 1e-4  # four AdamW steps of lr 1e-3 moved the weights


# --- training --------------------------------------------------------------------------------------


def test_mlp_learns_a_2d_gaussian():
    x, mu, cov = gaussian_2d(2000)
    cfg = TrainConfig(steps=300, batch=128, lr=2e-3, warmup_steps=20, log_every=50, device="cpu")
    res = train(x, "mlp:width=64,depth=3", cfg, progress=False)
    assert res.stats[-1]["loss"] < 0.9 * res.stats[0]["loss"]

    def errors(model):
        s = model.sample(4000, seed=1).astype(np.float64)
        return np.abs(s.mean(0) - mu).max(), np.linalg.norm(np.cov(s.T) - cov) / np.linalg.norm(cov)

    trained = CheckpointModel(precond=res.ema, config=res.config)
    e_mu, e_cov = errors(trained)
    # Sampling error alone: mean ~ 1/sqrt(4000) = 0.016, cov ~ 0.03 relative. 300 steps of a small
    # MLP leave a few percent of model error (measured ~0.05 / ~0.05); tolerances 0.15 / 0.2.
    assert e_mu < 0.15 and e_cov < 0.2
    # Control: the untrained network's samples are far outside those tolerances.
    untrained = CheckpointModel(
        precond=EDMPrecond(init_network(parse_model_spec("mlp:width=64,depth=3"), (2,), 0), res.sigma_data),
        config=res.config,
    )
    u_mu, u_cov = errors(untrained)
    assert u_mu > 0.3 or u_cov > 0.5


def test_cpu_run_is_bitwise_reproducible():
    x, _, _ = gaussian_2d(100)
    cfg = TrainConfig(steps=30, batch=16, log_every=10, device="cpu")
    a = train(x, TINY, cfg, progress=False)
    b = train(x, TINY, cfg, progress=False)
    c = train(x, TINY, replace(cfg, seed=1), progress=False)
    sa, sb, sc = (r.ema.state_dict() for r in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [s["loss"] for s in a.stats] == [s["loss"] for s in b.stats]
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_options_written_before_training_and_checkpoint_after(tmp_path):
    x, _, _ = gaussian_2d(64)
    out = tmp_path / "run"
    seen = []

    def on_log(line):
        seen.append(
            (
                (out / "options.json").is_file(),
                (out / "config.json").exists(),
                len((out / "stats.jsonl").read_text().splitlines()),
            )
        )

    cfg = TrainConfig(steps=20, batch=8, log_every=5, device="cpu")
    train(x, TINY, cfg, out_dir=out, progress=False, callback=on_log, dataset_spec="gaussian-2d")
    assert seen[0] == (
        True,
        False,
        1,
    )  # options.json already there at the first stats line, no checkpoint yet
    assert [s[2] for s in seen] == [1, 2, 3, 4]
    opts = json.loads((out / "options.json").read_text())
    assert (
        opts["model"] == parse_model_spec(TINY).spec
        and opts["n_train"] == 64
        and opts["train"]["steps"] == 20
    )
    lines = [json.loads(s) for s in (out / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in lines] == [5, 10, 15, 20]
    assert set(lines[0]) >= {"step", "loss", "lr", "grad_norm", "elapsed_s"}
    config = json.loads((out / "config.json").read_text())
    assert config["sigma_data"] == pytest.approx(float(x.astype(np.float64).std()), rel=1e-12)
    assert config["dataset"] == "gaussian-2d" and config["diffaudit_version"]
    with pytest.raises(DiffauditError, match="already holds"):
        train(x, TINY, cfg, out_dir=out, progress=False)


# --- checkpoints -----------------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path):
    x, _, _ = gaussian_2d(64)
    res = train(
        x, TINY, TrainConfig(steps=10, batch=8, device="cpu"), out_dir=tmp_path / "ck", progress=False
    )
    precond, config = load_checkpoint(tmp_path / "ck")
    assert config["shape"] == [2] and config["n_train"] == 64
    xq = torch.randn(50, 2)
    for s in (0.01, 0.5, 20.0):
        assert torch.equal(precond(xq, s), res.ema(xq, s))
    ref = res.ema(xq, 0.5).detach().double().numpy()
    np.testing.assert_array_equal(
        CheckpointModel(tmp_path / "ck", batch_size=64).denoise(xq.numpy().astype(np.float64), 0.5), ref
    )
    # In batches of 16 the float32 matmuls may round differently (~1 ulp), nothing more.
    model = CheckpointModel(tmp_path / "ck", num_steps=8, batch_size=16)
    np.testing.assert_allclose(model.denoise(xq.numpy().astype(np.float64), 0.5), ref, rtol=1e-6, atol=1e-7)
    # Sampling: deterministic per seed, and the same as the in-memory network's samples.
    mem = CheckpointModel(precond=res.ema, config=res.config, num_steps=8, batch_size=16)
    np.testing.assert_array_equal(model.sample(20, seed=3), mem.sample(20, seed=3))
    act = model.activations(x[:10], 0.5, "net.layers.1")
    assert act.shape == (10, 32) and act.dtype == np.float32
    with pytest.raises(DiffauditError):
        model.activations(x[:10], 0.5, "net.nope")


def test_checkpoint_bad_files(tmp_path):
    with pytest.raises(DiffauditError, match="not a folder"):
        load_checkpoint(tmp_path / "missing")
    d = tmp_path / "ck"
    d.mkdir()
    with pytest.raises(DiffauditError, match="config.json"):
        load_checkpoint(d)
    net = EDMPrecond(init_network(parse_model_spec(TINY), (2,), 0), 1.0)
    save_checkpoint(d, net, {"model": TINY, "shape": [2], "sigma_data": 1.0})
    load_checkpoint(d)
    (d / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DiffauditError, match="corrupt"):
        load_checkpoint(d)
    save_checkpoint(d, net, {"model": "mlp:width=16,depth=2,emb_dim=16", "shape": [2], "sigma_data": 1.0})
    with pytest.raises(DiffauditError, match="do not match"):
        load_checkpoint(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(DiffauditError, match="cannot be read"):
        load_checkpoint(d)


# --- many models at once ---------------------------------------------------------------------------


def test_vmap_training_equals_sequential_training(tmp_path):
    rng = np.random.default_rng(0)
    sets = [rng.standard_normal((n, 3)).astype(np.float32) * s for n, s in ((40, 1.0), (100, 0.5), (7, 2.0))]
    cfg = TrainConfig(
        steps=50,
        batch=16,
        lr=2e-3,
        warmup_steps=10,
        weight_decay=0.01,
        grad_clip=0.5,
        log_every=10,
        device="cpu",
    )
    seeds = [3, 5, 11]
    many = train_many(sets, TINY, cfg, seeds)
    for m in range(3):
        one = train(sets[m], TINY, replace(cfg, seed=seeds[m]), progress=False)
        ref = one.ema.net.state_dict()
        assert set(ref) == set(many.ema_states[m])
        # Same draws, same formulas; only float32 rounding differs (vmap's batched kernels and the
        # per-model norm reductions): measured max |diff| ~1e-6 after 50 steps.
        diff = max(float((ref[k] - many.ema_states[m][k]).abs().max()) for k in ref)
        assert diff < 1e-5, (m, diff)
        np.testing.assert_allclose(
            [s["loss"][m] for s in many.stats], [s["loss"] for s in one.stats], rtol=1e-5
        )
        assert many.configs[m]["sigma_data"] == one.config["sigma_data"]
        assert many.configs[m]["train"]["seed"] == seeds[m]
    # A different seed for model 0 gives different weights (the test above can fail).
    other = train(sets[0], TINY, replace(cfg, seed=4), progress=False).ema.net.state_dict()
    assert max(float((other[k] - many.ema_states[0][k]).abs().max()) for k in other) > 1e-3
    # Each model saves as a normal checkpoint.
    many.save(1, tmp_path / "m1")
    precond, config = load_checkpoint(tmp_path / "m1")
    xq = torch.randn(5, 3)
    assert torch.equal(precond(xq, 0.3), many.precond(1)(xq, 0.3)) and config["n_train"] == 100


def test_train_many_rejects_mismatched_sets():
    with pytest.raises(DiffauditError, match="shape"):
        train_many(
            [np.zeros((4, 2)) + np.arange(2), np.ones((4, 3)) * np.arange(3)], TINY, TrainConfig(steps=1)
        )
    with pytest.raises(DiffauditError, match="seeds"):
        train_many(
            [np.random.default_rng(0).standard_normal((4, 2))], TINY, TrainConfig(steps=1), seeds=[1, 2]
        )


# --- bad inputs and the CLI ------------------------------------------------------------------------


def test_bad_training_inputs():
    x, _, _ = gaussian_2d(10)
    with pytest.raises(DiffauditError, match="n >= 2"):
        train(x[:1], TINY, TrainConfig(steps=1))
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(DiffauditError, match="NaN"):
        train(bad, TINY, TrainConfig(steps=1))
    with pytest.raises(DiffauditError, match="steps"):
        train(x, TINY, TrainConfig(steps=0))
    if not torch.cuda.is_available():
        with pytest.raises(DiffauditError, match="CUDA"):
            train(x, TINY, TrainConfig(steps=1, device="cuda"))


def run_cli(*args, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "diffaudit", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


@pytest.mark.slow
def test_train_cli_end_to_end(tmp_path):
    out = tmp_path / "run"
    r = run_cli(
        "train",
        "--dataset",
        "hidden-manifold:d=8,D=2",
        "--n-train",
        "64",
        "--model",
        "mlp:width=16,depth=2",
        "--steps",
        "20",
        "--batch",
        "16",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    precond, config = load_checkpoint(out)
    assert (
        config["n_train"] == 64 and config["shape"] == [8] and config["dataset"].startswith("hidden-manifold")
    )
    from diffaudit.datasets.base import get_dataset
    from diffaudit.pipeline.setup import data_seeds

    # the audit's training set for --seed 0 (data_seeds), so `audit ckpt:` checks the items trained on
    x = get_dataset("hidden-manifold:d=8,D=2").sample(64, data_seeds(0)[0])[0]
    assert config["sigma_data"] == pytest.approx(float(x.astype(np.float64).std()), rel=1e-9)
    assert (out / "options.json").is_file() and len((out / "stats.jsonl").read_text().splitlines()) == 1
    # --train PATH: the same samples from a file give the same weights as --dataset (same seed).
    np.save(tmp_path / "x.npy", x)
    out2 = tmp_path / "run2"
    r = run_cli(
        "train",
        "--train",
        str(tmp_path / "x.npy"),
        "--model",
        "mlp:width=16,depth=2",
        "--steps",
        "20",
        "--batch",
        "16",
        "--device",
        "cpu",
        "--out",
        str(out2),
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    p2, _ = load_checkpoint(out2)
    assert all(torch.equal(a, b) for a, b in zip(precond.parameters(), p2.parameters(), strict=True))


@pytest.mark.parametrize(
    "args, needle",
    [
        (
            ["--dataset", "hidden-manifold:d=8", "--n-train", "64", "--model", "mlp:widht=3"],
            "valid parameters",
        ),
        (["--dataset", "hidden-manifold:d=8", "--n-train", "1"], "n-train"),
        (["--dataset", "nosuch", "--n-train", "10"], "unknown dataset"),
        (["--n-train", "10"], "exactly one of"),
        (["--train", "does-not-exist.npy"], "no such file"),
        (["--dataset", "hidden-manifold:d=8", "--n-train", "16", "--device", "cuda"], "CUDA"),
    ],
)
def test_train_cli_bad_input(tmp_path, args, needle):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = tmp_path / "run"
    r = run_cli("train", *args, "--steps", "2", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error:") and needle in r.stderr and "Traceback" not in r.stderr
    assert not Path(out).exists()  # nothing written for a rejected run


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"lr": "abc"}, "lr must be a finite number"),  # compared with 0 before: a TypeError traceback
        ({"lr": float("nan")}, "lr must be a finite number"),
        ({"steps": 2.5}, "steps must be a whole number"),
        ({"batch": True}, "batch must be a whole number"),  # a bool is not a batch size
        ({"batch": 0}, "steps and batch must be >= 1"),
        ({"bf16": "yes"}, "bf16 must be true or false"),
        ({"betas": (0.9,)}, "betas must be two numbers"),
        ({"betas": (0.9, 1.0)}, r"betas must be two numbers in \[0, 1\)"),
        ({"device": 0}, "device must be a string"),
    ],
)
def test_train_config_from_python_is_checked_before_training(options, needle):
    # the sweep spec checks types at load; a TrainConfig built in Python gets the same one-sentence errors
    x = np.random.default_rng(0).standard_normal((32, 4)).astype(np.float32)
    with pytest.raises(DiffauditError, match=needle):
        train(x, "mlp:width=16,depth=2", TrainConfig(**options), progress=False)
