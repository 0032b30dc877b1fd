"""Representation probe (probes/factors/representation.py): ridge against scikit-learn, DCI on known
encodings, and the activations it reads (diffaudit.models.activations) against a manual forward pass."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from diffaudit.errors import DiffauditError
from diffaudit.models.activations import layer_activations
from diffaudit.probes import factors as fp


def test_ridge_matches_sklearn():
    r = np.random.default_rng(0)
    A = r.standard_normal((200, 6))
    A -= A.mean(0)
    Z = A @ r.standard_normal((6, 2)) + 0.1 * r.standard_normal((200, 2))
    Z -= Z.mean(0)
    ref = Ridge(alpha=3.0, fit_intercept=False).fit(A, Z).coef_.T
    np.testing.assert_allclose(fp.ridge_fit(A, Z, 3.0), ref, rtol=1e-8)


def test_representation_probe_axis_aligned_vs_mixed_vs_noise():
    r = np.random.default_rng(0)
    z = r.standard_normal((2000, 3))
    # each unit encodes one factor (two units per factor) -> R^2 ~ 1, disentanglement ~ 1
    A_axis = np.repeat(np.eye(3), 2, axis=1) * np.array([1, 2, 0.5, 1, 3, 1])
    act = z @ A_axis + 0.05 * r.standard_normal((2000, 6))
    ra = fp.representation_probe(act, z, factor_names=["a", "b", "c"])
    assert min(ra.r2.values()) > 0.99 and ra.disentanglement > 0.9 and ra.completeness > 0.5
    # dense random mixing: still linearly decodable, but not disentangled
    act_mix = z @ r.standard_normal((3, 6)) + 0.05 * r.standard_normal((2000, 6))
    rm = fp.representation_probe(act_mix, z)
    assert min(rm.r2.values()) > 0.99 and rm.disentanglement < ra.disentanglement - 0.3
    # activations independent of the factors: held-out R^2 ~ 0
    rn = fp.representation_probe(r.standard_normal((2000, 6)), z)
    assert max(rn.r2.values()) < 0.02
    with pytest.raises(DiffauditError, match="rows"):
        fp.representation_probe(act[:10], z)


def test_layer_activations_match_a_manual_forward_pass():
    torch = pytest.importorskip("torch")

    class TinyDenoiser(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Linear(1, 8)
            self.body = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.SiLU(), torch.nn.Linear(8, 4))

        def forward(self, x, sigma):
            h = self.body[0](x) + self.embed(torch.log(sigma)[:, None] / 4)
            return self.body[2](self.body[1](h))

    torch.manual_seed(0)
    net = TinyDenoiser().train()
    x = np.random.default_rng(0).standard_normal((37, 4)).astype(np.float32)
    got = layer_activations(net, x, 0.5, "body.1", batch_size=10)
    with torch.no_grad():
        xt = torch.from_numpy(x)
        s = torch.full((37,), 0.5)
        ref = torch.nn.functional.silu(net.body[0](xt) + net.embed(torch.log(s)[:, None] / 4)).numpy()
    assert got.shape == (37, 8) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert net.training  # mode restored
    # activations at a different sigma differ (the layer sees the noise-level embedding)
    assert np.abs(layer_activations(net, x, 5.0, "body.1") - got).max() > 1e-3
    # noised inputs are seeded
    a1 = layer_activations(net, x, 0.5, "body.0", add_noise=True, seed=3)
    np.testing.assert_array_equal(a1, layer_activations(net, x, 0.5, "body.0", add_noise=True, seed=3))
    with pytest.raises(DiffauditError, match="body.0"):
        layer_activations(net, x, 0.5, "nope")
    # the probe on them: factors that are linear functions of x are decoded from body.0 (a linear layer)
    z = x[:, :2] @ np.array([[1.0, 0.5], [-0.3, 2.0]])
    acts = layer_activations(net, np.tile(x, (20, 1)) + 0.0, 0.5, "body.0")
    rp = fp.representation_probe(acts, np.tile(z, (20, 1)), alpha=1e-6)
    assert min(rp.r2.values()) > 0.999
