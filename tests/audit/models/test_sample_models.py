"""Sampling several trained networks together (``diffaudit.models.group_sampling``, issue 13): every model's
samples equal its own ``sample_from_noise`` (the reference: the one-model Heun sampler), with per-model noise
schedules (sigma_data), different sample counts, and incompatible models split into their own loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffaudit.errors import DiffauditError
from diffaudit.harness.edm import EDMPrecond
from diffaudit.harness.networks import parse_model_spec
from diffaudit.harness.train import init_network
from diffaudit.models.checkpoint import CheckpointModel
from diffaudit.models.controls import GaussianModel
from diffaudit.models.group_sampling import rows_per_model, sample_models
from diffaudit.models.sampler import noise_from_seeds

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(spec: str, d: int, seed: int, sigma_data: float, steps: int = 8, n_classes=None, batch_size=1024):
    net = init_network(parse_model_spec(spec), (d,), seed, n_classes=n_classes)
    # random weights scaled up, so the network's output matters at every noise level (not only c_skip x)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)
    cfg = {"model": spec, "shape": [d], "sigma_data": sigma_data}
    if n_classes is not None:
        cfg.update(conditioning="labels", n_classes=n_classes, label_dropout=0.1)
    return CheckpointModel(
        precond=EDMPrecond(net, sigma_data), config=cfg, num_steps=steps, batch_size=batch_size
    )


def test_equals_each_model_sampled_alone():
    spec = "mlp:width=32,depth=2,emb_dim=16"
    models = [_model(spec, 6, s, sd) for s, sd in enumerate([0.3, 1.0, 2.5, 7.0])]
    ns = [40, 3, 0, 17]  # unequal counts (padded rows are dropped), and a model with none
    noises = [noise_from_seeds(range(n), (6,), base_seed=100 + m) for m, n in enumerate(ns)]
    got = sample_models(models, noises)
    for m, model in enumerate(models):
        assert got[m].shape == (ns[m], 6) and got[m].dtype == np.float32
        if ns[m]:
            ref = model.sample_from_noise(noises[m])
            # float32 network, float64 state: the coefficients may differ in the last bit (module docstring)
            np.testing.assert_allclose(got[m], ref, rtol=0, atol=2e-5 * np.abs(ref).max())
    # the schedules differ per model: the same noise through two models' samplers gives different samples
    assert np.abs(got[0][:3] - got[1]).max() > 1e-2


def test_chunking_does_not_change_samples():
    """A sample depends on its own noise only: tiny chunks (batch_size 4 -> 4 rows per model) and one chunk
    agree, and equal the reference."""
    spec = "mlp:width=16,depth=2,emb_dim=8"
    small = [_model(spec, 3, s, 0.7 + s, batch_size=4) for s in range(3)]
    big = [_model(spec, 3, s, 0.7 + s) for s in range(3)]
    assert rows_per_model(small) == 4 and rows_per_model(big) == 1024
    noises = [noise_from_seeds(range(10), (3,), base_seed=m) for m in range(3)]
    a, b = sample_models(small, noises), sample_models(big, noises)
    for m in range(3):
        scale = np.abs(b[m]).max()  # float32 rounding differs with the BLAS kernel a chunk size picks
        np.testing.assert_allclose(a[m], b[m], rtol=0, atol=2e-5 * scale)
        np.testing.assert_allclose(a[m], big[m].sample_from_noise(noises[m]), rtol=0, atol=2e-5 * scale)


def test_incompatible_models_are_sampled_in_their_own_loops():
    """Different widths and sampler steps cannot share one vmapped loop: each set is still exact."""
    models = [
        _model("mlp:width=16,depth=2,emb_dim=8", 4, 0, 1.0, steps=6),
        _model("mlp:width=24,depth=2,emb_dim=8", 4, 1, 1.0, steps=6),
        _model("mlp:width=16,depth=2,emb_dim=8", 4, 2, 2.0, steps=4),
        _model("mlp:width=16,depth=2,emb_dim=8", 4, 3, 0.5, steps=6),
    ]
    noises = [noise_from_seeds(range(5), (4,), base_seed=m) for m in range(4)]
    got = sample_models(models, noises)
    for m, model in enumerate(models):
        ref = model.sample_from_noise(noises[m])
        np.testing.assert_allclose(got[m], ref, rtol=0, atol=2e-5 * np.abs(ref).max())


def test_bad_input_gets_one_sentence():
    spec = "mlp:width=16,depth=2,emb_dim=8"
    m = _model(spec, 4, 0, 1.0)
    z = noise_from_seeds(range(2), (4,))
    with pytest.raises(DiffauditError, match="one per model"):
        sample_models([m, m], [z])
    with pytest.raises(DiffauditError, match="shape"):
        sample_models([m], [z[:, :3]])
    bad = z.copy()
    bad[0, 0] = np.nan
    with pytest.raises(DiffauditError, match="NaN"):
        sample_models([m], [bad])
    with pytest.raises(DiffauditError, match="class-conditional"):
        sample_models([_model(spec, 4, 0, 1.0, n_classes=3)], [z])
    with pytest.raises(DiffauditError, match="not a trained diffaudit checkpoint"):
        sample_models([GaussianModel(np.random.default_rng(0).normal(size=(50, 4)))], [z])
    assert sample_models([], []) == []


def test_refuses_what_its_loop_would_get_wrong():
    """The loop re-implements EDMPrecond on the raw network with the model's sigma_data: a wrapper subclass,
    a config that disagrees with the network's sigma_data, or non-float32 weights would be sampled wrongly."""
    spec = "mlp:width=16,depth=2,emb_dim=8"
    z = noise_from_seeds(range(2), (4,))

    class Other(EDMPrecond):
        def forward(self, x, sigma, class_labels=None):
            return 2 * super().forward(x, sigma, class_labels)

    net = init_network(parse_model_spec(spec), (4,), 0)
    cfg = {"model": spec, "shape": [4], "sigma_data": 1.0}
    with pytest.raises(DiffauditError, match="not EDMPrecond"):
        sample_models([CheckpointModel(precond=Other(net, 1.0), config=cfg)], [z])
    with pytest.raises(DiffauditError, match="sigma_data 0.5 but its config says 1"):
        sample_models([CheckpointModel(precond=EDMPrecond(net, 0.5), config=cfg)], [z])
    net64 = init_network(parse_model_spec(spec), (4,), 0).double()
    with pytest.raises(DiffauditError, match="float64 weights"):
        sample_models([CheckpointModel(precond=EDMPrecond(net64, 1.0), config=cfg)], [z])


def test_halves_its_chunk_when_the_device_runs_out_of_memory():
    """An activation estimate that is too low (functional ops it cannot see) costs a retry, not the group."""

    class Tight(torch.nn.Module):  # "runs out of memory" above 3 rows per model
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)

        def forward(self, x, c_noise):
            if x.shape[0] > 3:
                raise torch.OutOfMemoryError("simulated")
            return self.lin(x) * c_noise[:, None]

    models = []
    for m, sd in enumerate((0.5, 2.0)):
        torch.manual_seed(m)
        cfg = {"shape": [3], "sigma_data": sd}  # no spec: rows from the sample size alone (1024 here)
        models.append(CheckpointModel(precond=EDMPrecond(Tight(), sd), config=cfg, num_steps=4))
    noises = [noise_from_seeds(range(n), (3,), base_seed=m) for m, n in enumerate((10, 7))]
    got = sample_models(models, noises)
    for m, model in enumerate(models):
        model.batch_size = 3  # the reference, in chunks the network accepts
        ref = model.sample_from_noise(noises[m])
        np.testing.assert_allclose(got[m], ref, rtol=0, atol=2e-5 * np.abs(ref).max())


def test_activation_estimate_counts_self_attention():
    """The (hw x hw) logits and softmax of a UNet's attention are the largest tensors at its level: counted."""
    from diffaudit.harness.vmap import network_size

    plain = network_size("unet:channels=16,levels=1", (3, 32, 32))[1]
    attn = network_size("unet:channels=16,levels=1,attention=true", (3, 32, 32))[1]
    assert attn - plain >= 2 * (32 * 32) ** 2
