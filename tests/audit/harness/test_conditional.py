"""Class-conditional EDM models in the harness (issue 14, part 2): label embeddings, label dropout for
classifier-free guidance (Ho & Salimans 2022), conditional training and checkpoints, CFG in the checkpoint
model, and ``diffaudit train --condition labels``; unconditional training bit for bit as before."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from diffaudit.cli import main as cli_main
from diffaudit.datasets.base import get_dataset
from diffaudit.datasets.labels import labels_from_factors
from diffaudit.errors import DiffauditError
from diffaudit.harness.checkpoint import load_checkpoint
from diffaudit.harness.edm import EDMPrecond, check_label_dropout, drop_labels
from diffaudit.harness.networks import build_network, parse_model_spec
from diffaudit.harness.train import TrainConfig, init_network, train
from diffaudit.harness.vmap import train_many
from diffaudit.models.adapters import load_model
from diffaudit.models.checkpoint import CheckpointModel
from diffaudit.pipeline.setup import data_seeds

TINY = "mlp:width=32,depth=2,emb_dim=16"
MOLRG = "molrg:d=8,K=3,r=1"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def state_sha(sd: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# --- unconditional networks and training: exactly as before conditioning existed ---------------------


def test_unconditional_training_is_unchanged_by_conditioning():
    # numbers computed with the code of the parent commit (4883463), before labels existed
    spec = parse_model_spec(TINY)
    init = init_network(spec, (3,), 0)
    assert state_sha(init.state_dict()) == "7d78d0e4c125a844"  # initial weights, bit for bit
    x = np.random.default_rng(0).standard_normal((100, 3)).astype(np.float32)
    res = train(x, TINY, TrainConfig(steps=30, batch=16, device="cpu", log_every=30), progress=False)
    sd = res.ema.net.state_dict()
    assert list(sd) == [
        "emb.mlp.0.weight", "emb.mlp.0.bias", "emb.mlp.2.weight", "emb.mlp.2.bias", "layers.0.weight",
        "layers.0.bias", "layers.1.weight", "layers.1.bias", "out.weight", "out.bias",
    ]  # fmt: skip
    # the same batches, sigmas and noise: any change of the random stream moves these by far more than 1e-6
    ref = [65.356983865, 3.518934192, 92.856946578, 2.482418805, 27.393094754, 9.170187967, 87.544599736,
           2.664381099, 7.094353891, 0.1585305]  # fmt: skip
    np.testing.assert_allclose([float(v.double().abs().sum()) for v in sd.values()], ref, rtol=1e-6)
    assert res.stats[-1]["loss"] == pytest.approx(0.9514290928840637, rel=1e-6)
    assert "conditioning" not in res.config and "n_classes" not in res.config
    xi = np.random.default_rng(1).standard_normal((20, 1, 8, 8)).astype(np.float32)
    cfg = TrainConfig(steps=3, batch=4, device="cpu", log_every=3)
    res = train(xi, "unet:channels=8,levels=2,emb_dim=16", cfg, progress=False)
    sd = res.ema.net.state_dict()
    assert len(sd) == 80 and not any("label" in k for k in sd)
    total = float(sum(v.double().abs().sum() for v in sd.values()))
    assert total == pytest.approx(1771.366473973, rel=1e-6)
    assert res.stats[-1]["loss"] == pytest.approx(1.0659881830215454, rel=1e-6)


@pytest.mark.parametrize(
    "spec, shape", [(TINY, (3,)), ("unet:channels=8,levels=2,emb_dim=16", (1, 8, 8))], ids=["mlp", "unet"]
)
def test_conditional_network_adds_only_a_label_table(spec, shape):
    cfg = parse_model_spec(spec)
    plain, cond = init_network(cfg, shape, 0), init_network(cfg, shape, 0, n_classes=4)
    sp, sc = plain.state_dict(), cond.state_dict()
    assert list(sc) == [*sp, "label_emb.table.weight"]  # created last: the rest drew what it drew before
    assert all(torch.equal(sp[k], sc[k]) for k in sp)
    assert sc["label_emb.table.weight"].shape[0] == 5  # 4 classes + the null label
    x = torch.randn(6, *shape)
    c = torch.randn(6)
    with torch.no_grad():
        # None is the null label (row n_classes); a label changes the output
        assert torch.equal(cond(x, c), cond(x, c, torch.full((6,), 4)))
        assert not torch.allclose(cond(x, c), cond(x, c, torch.zeros(6, dtype=torch.long)))
        with pytest.raises(DiffauditError, match="without classes"):
            plain(x, c, torch.zeros(6, dtype=torch.long))
        pre = EDMPrecond(cond, 0.5)
        assert torch.equal(pre(x, 0.7), pre(x, 0.7, torch.full((6,), 4)))
    for bad in (1, 0, 2.5, True):
        with pytest.raises(DiffauditError, match="n_classes"):
            build_network(cfg, shape, n_classes=bad)


def test_label_dropout_draws():
    y = torch.arange(20_000) % 3
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert drop_labels(y, 3, 0.0, g) is y and torch.equal(g.get_state(), state)  # p = 0 draws nothing
    out = drop_labels(y, 3, 0.3, g)
    dropped = out == 3
    assert abs(float(dropped.double().mean()) - 0.3) < 0.015  # binomial sd 0.003
    assert torch.equal(out[~dropped], y[~dropped])
    for bad in (1.0, -0.1, float("nan"), True, "0.1"):
        with pytest.raises(DiffauditError, match="label_dropout"):
            check_label_dropout(bad)


# --- training and refusing bad labels -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"labels": np.zeros(31, np.int64)}, "one class label per training item"),
        ({"labels": np.full(32, 0.5)}, "whole numbers"),
        ({"labels": np.array(["a", "b"] * 16)}, "whole numbers"),
        ({"labels": np.r_[np.zeros(31), -1].astype(int)}, "outside the classes"),
        ({"labels": np.arange(32) % 3, "n_classes": 2}, "label 2 is outside the classes 0..1"),
        ({"labels": np.zeros(32, np.int64)}, "needs >= 2"),
        ({"labels": np.arange(32) % 2, "n_classes": 1}, "n_classes"),
        ({"labels": np.arange(32) % 2, "class_names": ("a", "b", "c")}, "3 class names for 2 classes"),
        ({"n_classes": 3}, "need labels"),
    ],
)
def test_train_refuses_bad_labels(tmp_path, kwargs, needle):
    x = np.random.default_rng(0).standard_normal((32, 4)).astype(np.float32)
    with pytest.raises(DiffauditError, match=needle):
        train(x, TINY, TrainConfig(steps=1, device="cpu"), tmp_path / "run", progress=False, **kwargs)
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_label_dropout_option_is_checked():
    x = np.random.default_rng(0).standard_normal((32, 4)).astype(np.float32)
    with pytest.raises(DiffauditError, match=r"label_dropout must be a probability in \[0, 1\)"):
        train(x, TINY, TrainConfig(label_dropout=1.0), labels=np.arange(32) % 2, progress=False)


def test_train_many_refuses_labels():
    x = np.random.default_rng(0).standard_normal((32, 4)).astype(np.float32)
    with pytest.raises(DiffauditError, match="unconditional models only"):
        train_many([x, x], TINY, TrainConfig(steps=1, device="cpu"), labels=[np.arange(32) % 2, None])


def test_conditional_grad_variance_runs_with_labels():
    x = np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32)
    cfg = TrainConfig(steps=2, batch=8, device="cpu", log_every=1, grad_variance=3)
    res = train(x, TINY, cfg, labels=np.arange(40) % 4, progress=False)
    assert all(line["grad_var"] > 0 for line in res.stats) and res.config["n_classes"] == 4


# --- a trained conditional model: classes, the null label, guidance -----------------------------------------


@pytest.fixture(scope="module")
def molrg_model():
    """A conditional MLP trained on molrg (d=8, K=3 components of rank 1): about 3 s on one thread."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ds = get_dataset(MOLRG)
        x, z = ds.sample(600, 0)
        y = labels_from_factors(ds, z)
        cfg = TrainConfig(steps=600, batch=64, lr=2e-3, ema_halflife_nimg=5000, device="cpu", log_every=600)
        res = train(x, "mlp:width=64,depth=3,emb_dim=16", cfg, labels=y, class_names=("a", "b", "c"),
                    progress=False)  # fmt: skip
    finally:
        torch.set_num_threads(old)
    return ds, res


def test_conditional_mlp_samples_the_asked_component(molrg_model):
    ds, res = molrg_model
    model = CheckpointModel(precond=res.ema, config=res.config, num_steps=16)
    assert model.conditioning == "labels" and model.n_classes == 3 and model.class_names == ("a", "b", "c")
    n = 300
    for c in range(3):
        k = labels_from_factors(ds, ds.project(model.sample(n, seed=1, cond=np.full(n, c)))[0])
        # measured 0.95-0.98 per class after 600 steps (chance: 1/3)
        assert np.mean(k == c) > 0.85, (c, np.bincount(k, minlength=3))
    # the null label (cond=None) is the unconditional model: every component, near 1/3 each (measured
    # 0.32 / 0.33 / 0.35)
    share = np.bincount(labels_from_factors(ds, ds.project(model.sample(n, seed=1))[0]), minlength=3) / n
    assert share.min() > 0.2, share


def test_cfg_is_the_guided_combination_of_two_denoiser_calls(molrg_model):
    ds, res = molrg_model
    plain = CheckpointModel(precond=res.ema, config=res.config)
    x = np.random.default_rng(2).standard_normal((50, 8))
    cond = np.arange(50) % 3
    for sigma in (0.05, 0.8, 5.0):
        D_c, D_null = plain.denoise(x, sigma, cond), plain.denoise(x, sigma)
        with torch.no_grad():
            ref = res.ema(torch.from_numpy(x).float(), sigma, torch.from_numpy(cond)).double().numpy()
        np.testing.assert_array_equal(D_c, ref)  # guidance 1: the plain conditional call
        for w in (0.0, 2.0, 4.5):
            guided = CheckpointModel(precond=res.ema, config=res.config, guidance=w).denoise(x, sigma, cond)
            np.testing.assert_allclose(guided, D_null + w * (D_c - D_null), rtol=1e-12, atol=1e-12)
        assert not np.allclose(D_c, D_null)


# --- checkpoints ------------------------------------------------------------------------------------------


def test_conditional_checkpoint_round_trip(tmp_path):
    ds = get_dataset(MOLRG)
    x, z = ds.sample(64, 0)
    y = labels_from_factors(ds, z)
    cfg = TrainConfig(steps=5, batch=16, device="cpu", label_dropout=0.2)
    res = train(x, TINY, cfg, tmp_path / "run", progress=False, labels=y, class_names=("a", "b", "c"))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["conditioning"] == "labels" and config["n_classes"] == 3
    assert config["class_names"] == ["a", "b", "c"] and config["label_dropout"] == 0.2
    assert config["train"]["label_dropout"] == 0.2 and len(config["train_labels_sha256"]) == 64
    precond, _ = load_checkpoint(tmp_path / "run")
    assert precond.n_classes == 3 and "label_emb.table.weight" in precond.net.state_dict()
    model = load_model(f"ckpt:{tmp_path / 'run'}", device="cpu", guidance=2.0)
    assert model.conditioning == "labels" and model.n_classes == 3 and model.guidance == 2.0
    xq = np.random.default_rng(1).standard_normal((10, 8))
    cond = np.arange(10) % 3
    direct = CheckpointModel(precond=res.ema, config=res.config, guidance=2.0)
    np.testing.assert_array_equal(model.denoise(xq, 0.5, cond), direct.denoise(xq, 0.5, cond))
    assert model.sample(4, seed=0, cond=[0, 1, 2, 0]).shape == (4, 8)
    for bad, needle in (([0, 1, 3] * 3 + [0], "outside the model's classes"), ([0, 1], "one class label")):
        with pytest.raises(DiffauditError, match=needle):
            model.denoise(xq, 0.5, np.array(bad))
    with pytest.raises(DiffauditError, match="guidance must be a finite number >= 0"):
        CheckpointModel(tmp_path / "run", guidance=-1.0)
    # a conditional config without a valid class count is refused, not half-loaded
    bad_cfg = {**config, "n_classes": 1}
    (tmp_path / "run" / "config.json").write_text(json.dumps(bad_cfg))
    with pytest.raises(DiffauditError, match="n_classes"):
        load_checkpoint(tmp_path / "run")


def test_no_label_dropout_means_no_unconditional_mode():
    x = np.random.default_rng(0).standard_normal((32, 4)).astype(np.float32)
    res = train(x, TINY, TrainConfig(steps=2, batch=8, device="cpu", label_dropout=0.0),
                labels=np.arange(32) % 2, progress=False)  # fmt: skip
    assert res.config["label_dropout"] == 0.0
    model = CheckpointModel(precond=res.ema, config=res.config, num_steps=4)
    xq = np.random.default_rng(1).standard_normal((5, 4))
    assert model.denoise(xq, 0.5, np.zeros(5, np.int64)).shape == (5, 4)
    with pytest.raises(DiffauditError, match="label_dropout 0"):
        model.denoise(xq, 0.5)
    with pytest.raises(DiffauditError, match="label_dropout 0"):
        model.sample(3, seed=0)
    with pytest.raises(DiffauditError, match="cannot be guided"):
        CheckpointModel(precond=res.ema, config=res.config, guidance=2.0)


def test_unconditional_checkpoint_refuses_a_condition(tmp_path):
    x = np.random.default_rng(0).standard_normal((32, 4)).astype(np.float32)
    train(x, TINY, TrainConfig(steps=2, batch=8, device="cpu"), tmp_path / "run", progress=False)
    model = CheckpointModel(tmp_path / "run")
    assert model.conditioning is None and model.n_classes is None
    xq = np.random.default_rng(1).standard_normal((5, 4))
    with pytest.raises(DiffauditError, match="unconditional"):
        model.denoise(xq, 0.5, np.zeros(5, np.int64))
    with pytest.raises(DiffauditError, match="unconditional"):
        model.sample(5, seed=0, cond=np.zeros(5, np.int64))
    with pytest.raises(DiffauditError, match="guidance"):
        load_model(f"ckpt:{tmp_path / 'run'}", device="cpu", guidance=3.0)


# --- the CLI ----------------------------------------------------------------------------------------------

CLI = ["--model", "mlp:width=16,depth=2", "--steps", "4", "--batch", "16", "--device", "cpu"]


def test_train_cli_condition_labels(tmp_path, capsys):
    out = tmp_path / "run"
    cli_main(["train", "--dataset", MOLRG, "--n-train", "64", *CLI, "--out", str(out), "--quiet",
              "--condition", "labels", "--label-dropout", "0.25"])  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert config["conditioning"] == "labels" and config["n_classes"] == 3
    assert config["class_names"] == ["0", "1", "2"] and config["label_dropout"] == 0.25
    assert "with 3 classes" in capsys.readouterr().out
    # --train FILE --train-labels FILE: the same items and labels give the same weights as --dataset
    ds = get_dataset(MOLRG)
    x, z = ds.sample(64, data_seeds(0)[0])
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", labels_from_factors(ds, z))
    out2 = tmp_path / "run2"
    cli_main(["train", "--train", str(tmp_path / "x.npy"), "--train-labels", str(tmp_path / "y.npy"), *CLI,
              "--out", str(out2), "--quiet", "--condition", "labels", "--label-dropout", "0.25"])  # fmt: skip
    a, _ = load_checkpoint(out)
    b, config2 = load_checkpoint(out2)
    assert config2["n_classes"] == 3 and "class_names" not in config2  # a labels file has no names
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_train_cli_text_labels_file(label_files):
    out = label_files / "run"
    cli_main(["train", "--train", str(label_files / "x.npy"), "--train-labels", str(label_files / "ok.txt"),
              *CLI, "--out", str(out), "--quiet", "--condition", "labels", "--n-train", "20"])  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert config["n_classes"] == 2 and config["n_train"] == 20 and config["label_dropout"] == 0.1


@pytest.fixture
def label_files(tmp_path):
    x = np.random.default_rng(0).standard_normal((32, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "short.npy", np.zeros(3, np.int64))
    np.save(tmp_path / "neg.npy", np.r_[np.zeros(31), -1].astype(np.int64))
    np.save(tmp_path / "frac.npy", np.full(32, 0.5))
    np.save(tmp_path / "one.npy", np.zeros(32, np.int64))
    np.save(tmp_path / "ok.npy", np.arange(32) % 2)
    np.save(tmp_path / "grid.npy", np.zeros((32, 2), np.int64))
    (tmp_path / "ok.txt").write_text("\n".join(str(i % 2) for i in range(32)))
    return tmp_path


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--dataset", "hidden-manifold:d=8,D=2", "--n-train", "32", "--condition", "labels"], "no discrete factor"),
        (["--train", "x.npy", "--condition", "labels"], "needs --train-labels FILE"),
        (["--train", "x.npy", "--condition", "labels", "--train-labels", "short.npy"], "3 labels for 32 samples"),
        (["--train", "x.npy", "--condition", "labels", "--train-labels", "neg.npy"], "label -1 is negative"),
        (["--train", "x.npy", "--condition", "labels", "--train-labels", "frac.npy"], "whole numbers"),
        (["--train", "x.npy", "--condition", "labels", "--train-labels", "one.npy"], "needs >= 2"),
        (["--train", "x.npy", "--condition", "labels", "--train-labels", "grid.npy"], "one value per row"),
        (["--train", "x.npy", "--condition", "labels", "--train-labels", "nosuch.npy"], "no such file"),
        (["--train", "x.npy", "--condition", "labels", "--train-labels", "x.npy"], "one value per row"),
        (["--train", "x.npy", "--train-labels", "ok.npy"], "add --condition labels"),
        (["--train", "x.npy", "--label-dropout", "0.2"], "add --condition labels"),
        (["--dataset", MOLRG, "--n-train", "32", "--condition", "labels", "--train-labels", "ok.npy"],
         "goes with --train"),
        (["--dataset", MOLRG, "--n-train", "32", "--condition", "labels", "--label-dropout", "1"],
         r"label_dropout must be a probability in [0, 1)"),
        (["--dataset", MOLRG, "--n-train", "32", "--condition", "words"], "--condition"),
    ],
)  # fmt: skip
def test_train_cli_bad_condition_input(label_files, capsys, monkeypatch, args, needle):
    monkeypatch.chdir(label_files)
    out = label_files / "run"
    with pytest.raises(SystemExit) as e:
        cli_main(["train", *args, *CLI, "--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err
    assert not out.exists()  # nothing written for a rejected run
