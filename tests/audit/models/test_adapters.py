"""Model adapters: every spec form, their errors, and the diffusers wrapper on a tiny random pipeline."""

import sys
import textwrap

import numpy as np
import pytest

from diffaudit.errors import DiffauditError
from diffaudit.models import adapters
from diffaudit.models.adapters import (
    ADAPTERS,
    FORMS,
    DiffusersModel,
    adapters_help,
    check_spec,
    load_model,
    model_name,
)
from diffaudit.models.contract import Model


def test_samples_first_n_and_too_many(tmp_path):
    x = np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32)
    np.save(tmp_path / "g.npy", x)
    m = load_model(f"samples:{tmp_path / 'g.npy'}")
    assert m.n_available == 10 and m.shape == (3,)
    np.testing.assert_array_equal(m.sample(4, seed=123), x[:4])  # first n, seed ignored
    np.testing.assert_array_equal(m.sample(4, seed=7), x[:4])
    with pytest.raises(DiffauditError, match="hold 10 samples"):
        m.sample(11)
    assert not m.has_denoiser


def test_unknown_spec_lists_forms():
    for spec in ("nonsense", "foo:bar", "samples:"):
        with pytest.raises(DiffauditError, match="entry:pkg.module:factory"):
            load_model(spec)


def test_controls(rng):
    from diffaudit.datasets.base import get_dataset

    ds = get_dataset("hidden-manifold:d=8,D=2")
    train = ds.sample(50, 1)[0]
    g = load_model("control:gaussian", train=train)
    assert g.has_denoiser and g.shape == (8,)
    mu = train.astype(np.float64).mean(0)
    np.testing.assert_allclose(g.denoise(mu[None], 1.0)[0], mu, atol=1e-10)  # D(mu) = mu
    o = load_model("control:oracle", dataset=ds)
    np.testing.assert_array_equal(o.sample(5, 3), ds.sample(5, 3)[0])
    with pytest.raises(DiffauditError, match="needs --dataset"):
        load_model("control:oracle", train=train)
    with pytest.raises(DiffauditError, match="unknown control"):
        load_model("control:vae", train=train)


def test_entry_factory_and_function(tmp_path, monkeypatch):
    (tmp_path / "mymodels.py").write_text(
        textwrap.dedent("""
        import numpy as np

        def sample(n, seed):
            return np.full((n, 4), float(seed), np.float32)

        class Obj:
            shape = (4,)
            def sample(self, n, seed=0):
                return np.ones((n, 4), np.float32) * 2
            def denoise(self, x, sigma):
                return x * 0.5

        def factory():
            return Obj()

        def bad_factory():
            return 42
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    f = load_model("entry:mymodels:sample")
    np.testing.assert_array_equal(f.sample(3, 5), np.full((3, 4), 5.0))
    assert not f.has_denoiser
    o = load_model("entry:mymodels:factory")
    assert o.has_denoiser and o.shape == (4,)
    np.testing.assert_allclose(o.denoise(np.ones((2, 4)), 1.0), 0.5)
    with pytest.raises(DiffauditError, match="no sample"):
        load_model("entry:mymodels:bad_factory")
    with pytest.raises(DiffauditError, match="cannot import"):
        load_model("entry:no_such_module_xyz:factory")
    with pytest.raises(DiffauditError, match="no attribute"):
        load_model("entry:mymodels:missing")
    with pytest.raises(DiffauditError, match="pkg.module:factory"):
        load_model("entry:justamodule")
    sys.modules.pop("mymodels", None)


def test_model_name_is_file_safe():
    assert model_name("samples:/a/b/gen.npy") == "samples-gen.npy"
    assert model_name("control:oracle") == "control-oracle"
    assert "/" not in model_name("entry:pkg.mod:<script>")
    assert model_name("ckpt:runs/mlp/") == "ckpt-mlp"  # path forms keep the last path component
    assert model_name("diffusers:/x/pipe") == "diffusers-pipe"
    assert model_name("entry:pkg.mod:factory") == "entry-factory"
    assert model_name("gan:x/y") == "gan-x-y"  # an unregistered form keeps its whole argument


# --------------------------------------------------------------------------------------------- registry

BUILT_IN = ("samples", "entry", "ckpt", "diffusers", "control")


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, restored after the test (registration is process-wide)."""
    monkeypatch.setattr(adapters, "ADAPTERS", dict(adapters.ADAPTERS))
    monkeypatch.setattr(adapters, "FORMS", adapters.FORMS)
    return adapters


class ToyModel(Model):
    """Sample i of seed s is ``scale * (s + i)`` in every coordinate: its output is known exactly."""

    def __init__(self, scale: float, d: int):
        self.scale, self.shape, self.name = scale, (d,), f"toy:{scale}"

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        return self.scale * (seed + np.arange(n, dtype=np.float64))[:, None] * np.ones((1, self.shape[0]))


def _check_toy(arg):
    try:
        float(arg)
    except ValueError:
        raise DiffauditError(f"model spec 'toy:{arg}' needs a number, as in toy:SCALE.") from None


def test_registry_lists_every_built_in_form_once():
    assert tuple(ADAPTERS) == BUILT_IN
    assert FORMS == tuple(a.form for a in ADAPTERS.values())
    for name, a in ADAPTERS.items():
        assert a.name == name and a.form.startswith(f"{name}:")
        assert a.description and "\n" not in a.description
    help_lines = adapters_help().splitlines()
    assert len(help_lines) == len(BUILT_IN)
    assert all(line.startswith(a.form) for line, a in zip(help_lines, ADAPTERS.values(), strict=True))


def test_unknown_form_lists_every_registered_form():
    for spec in ("gan:x", "nonsense", "samples:", "  :x"):
        with pytest.raises(DiffauditError) as e:
            load_model(spec)
        assert all(form in str(e.value) for form in FORMS), (spec, str(e.value))
    with pytest.raises(DiffauditError, match="unknown form 'gan'"):
        check_spec("gan:x")


def test_check_spec_loads_nothing_and_refuses_typos():
    # accepted without touching the file, importing the module or needing --dataset
    assert check_spec(" Samples: /no/such/file.npy ") == (ADAPTERS["samples"], "/no/such/file.npy")
    assert check_spec("entry:no_such_module_xyz:factory")[1] == "no_such_module_xyz:factory"
    assert "no_such_module_xyz" not in sys.modules
    assert check_spec("control:oracle") == (ADAPTERS["control"], "oracle")
    assert check_spec("control:shrunk:factor=0.3")[1] == "shrunk:factor=0.3"
    # refused by the adapter's own check, before any data
    with pytest.raises(DiffauditError, match="unknown control 'vae'"):
        check_spec("control:vae")
    with pytest.raises(DiffauditError, match="entry:pkg.module:factory"):
        check_spec("entry:justamodule")


def test_registered_toy_adapter_is_reachable_through_load_model(registry):
    seen = []

    def load_toy(arg, ctx):
        seen.append(ctx)
        return ToyModel(float(arg), ctx.train.shape[1])

    a = registry.register_adapter(
        "toy",
        form="toy:SCALE",
        description="a toy: sample i is SCALE * (seed + i)",
        load=load_toy,
        check=_check_toy,
    )
    assert registry.ADAPTERS["toy"] is a and registry.FORMS == (*FORMS, "toy:SCALE")
    train = np.zeros((4, 3), np.float32)
    m = load_model("toy: 2.5", train=train, dataset="ds", device="cpu", num_steps=7)
    np.testing.assert_array_equal(m.sample(3, seed=1), 2.5 * np.array([[1.0] * 3, [2.0] * 3, [3.0] * 3]))
    (ctx,) = seen
    assert ctx.train is train and ctx.dataset == "ds" and ctx.device == "cpu" and ctx.num_steps == 7
    assert ctx.sampler_kwargs() == {"num_steps": 7}
    load_model("toy:1", train=train)
    assert seen[-1].num_steps is None and seen[-1].sampler_kwargs() == {}  # unset: the model's own default
    with pytest.raises(DiffauditError, match="toy:SCALE"):
        load_model("toy:abc", train=train)
    assert len(seen) == 2  # the check refused it before the loader ran
    with pytest.raises(DiffauditError, match="toy:SCALE"):  # the new form is listed in every error
        load_model("gan:x")
    assert "toy:SCALE" in adapters_help() and model_name("toy:2.5") == "toy-2.5"


def test_register_adapter_refuses_mistakes(registry):
    def load(arg, ctx):
        return ToyModel(1.0, 2)

    with pytest.raises(DiffauditError, match="already registered"):
        registry.register_adapter("samples", form="samples:PATH", description="x", load=load)
    for bad in ("Toy", "to:y", "", "toy model"):
        with pytest.raises(DiffauditError, match="name"):
            registry.register_adapter(bad, form=f"{bad}:X", description="x", load=load)
    with pytest.raises(DiffauditError, match="must start with 'toy:'"):
        registry.register_adapter("toy", form="TOY", description="x", load=load)
    for desc in ("", "two\nlines"):
        with pytest.raises(DiffauditError, match="one non-empty line"):
            registry.register_adapter("toy", form="toy:X", description=desc, load=load)
    with pytest.raises(DiffauditError, match="callables"):
        registry.register_adapter("toy", form="toy:X", description="x", load=None)
    assert "toy" not in registry.ADAPTERS and registry.FORMS == FORMS  # nothing half-registered
    # replace=True swaps the loader of an existing form, keeping its place in the help order
    registry.register_adapter("samples", form="samples:PATH", description="replaced", load=load, replace=True)
    assert tuple(registry.ADAPTERS) == BUILT_IN and registry.ADAPTERS["samples"].description == "replaced"
    assert load_model("samples:anything").shape == (2,)


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    diffusers = pytest.importorskip("diffusers")
    import torch

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    sched = diffusers.DDPMScheduler(num_train_timesteps=100)
    path = tmp_path_factory.mktemp("pipe")
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(str(path))
    return path, unet, sched


def test_diffusers_denoiser_matches_epsilon_formula(tiny_pipeline):
    """D(x, sigma_t) = x - sigma_t eps(x / sqrt(1 + sigma_t^2), t) at a discrete timestep (k-diffusion's
    DiscreteEpsDDPMDenoiser), and sigma -> t is exact on the schedule's own sigmas."""
    import torch

    path, unet, sched = tiny_pipeline
    m = load_model(f"diffusers:{path}", device="cpu", num_steps=4)
    assert isinstance(m, DiffusersModel) and m.shape == (1, 8, 8) and m.has_denoiser
    ac = sched.alphas_cumprod.double().numpy()
    t = 37
    sigma = float(np.sqrt((1 - ac[t]) / ac[t]))
    assert m.sigma_to_t(sigma) == pytest.approx(t, abs=1e-6)
    # between two timesteps: interpolated in log sigma
    s_mid = float(np.exp(0.5 * (np.log(m.sigmas_[10]) + np.log(m.sigmas_[11]))))
    assert m.sigma_to_t(s_mid) == pytest.approx(10.5, abs=1e-6)
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8))
    with torch.no_grad():
        eps = unet(
            torch.from_numpy((x / np.sqrt(1 + sigma**2)).astype(np.float32)), torch.full((3,), float(t))
        ).sample
    ref = x - sigma * eps.double().numpy()
    np.testing.assert_allclose(m.denoise(x, sigma), ref, rtol=1e-5, atol=1e-5)
    s = m.sample(2, seed=0)
    assert s.shape == (2, 1, 8, 8) and np.isfinite(s).all()
    assert m.sampler_config.sigma_max <= m.sigmas_.max() + 1e-9


def test_diffusers_bad_folder(tmp_path):
    with pytest.raises(DiffauditError, match="scheduler"):
        load_model(f"diffusers:{tmp_path}")
    with pytest.raises(DiffauditError, match="no such folder"):
        load_model(f"diffusers:{tmp_path / 'nope'}")


def test_ckpt_adapter_matches_network(tmp_path):
    import torch

    from diffaudit.harness.checkpoint import save_checkpoint
    from diffaudit.harness.edm import EDMPrecond
    from diffaudit.harness.networks import build_network, parse_model_spec

    torch.manual_seed(0)
    spec = "mlp:width=16,depth=2"
    net = build_network(parse_model_spec(spec), (8,))
    save_checkpoint(tmp_path / "ck", net, {"model": spec, "shape": [8], "sigma_data": 0.5})
    m = load_model(f"ckpt:{tmp_path / 'ck'}", device="cpu", num_steps=4)
    assert m.has_denoiser and m.shape == (8,)
    x = np.random.default_rng(1).standard_normal((5, 8))
    with torch.no_grad():
        ref = EDMPrecond(net, 0.5)(torch.from_numpy(x.astype(np.float32)), 0.7).double().numpy()
    np.testing.assert_allclose(m.denoise(x, 0.7), ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(DiffauditError, match="config.json"):
        load_model(f"ckpt:{tmp_path}")
