"""Text-to-image pipelines behind the model contract, on a tiny random Stable Diffusion pipeline built here."""

import shutil
import sys

import numpy as np
import pytest

from diffaudit.errors import DiffauditError
from diffaudit.models.adapters import DiffusersModel, load_model
from diffaudit.models.sampler import noise_from_seeds
from diffaudit.models.text_pipeline import TextToImageModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["a photo of a red cat", "a blue dog", "a cat"]


@pytest.fixture(scope="module")
def sd_model(tiny_sd):
    return load_model(f"diffusers:{tiny_sd[0]}", device="cpu", num_steps=3, guidance=7.5)


def _latents(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 4, 8, 8))


def test_loads_as_prompt_model(tiny_sd, sd_model):
    m = sd_model
    assert isinstance(m, TextToImageModel) and not isinstance(m, DiffusersModel)
    assert m.conditioning == "prompts" and m.has_denoiser and m.guidance == 7.5
    assert m.shape == (3, 16, 16) and m.latent_shape == (4, 8, 8)
    assert m.name == f"diffusers:{tiny_sd[0]}"
    s = m.schedule.sigmas  # the sampler stays inside the sigmas the scheduler covers
    assert s.min() - 1e-12 <= m.sampler_config.sigma_min < m.sampler_config.sigma_max <= s.max() + 1e-12
    assert load_model(f"diffusers:{tiny_sd[0]}", device="cpu").guidance == 1.0  # LoadContext's value as given


def test_embeddings_match_the_pipelines_encode_prompt(tiny_sd, sd_model):
    import torch

    _, pipe, _ = tiny_sd
    with torch.no_grad():
        ref_c, ref_u = pipe.encode_prompt(PROMPTS, "cpu", 1, True)
    np.testing.assert_allclose(sd_model.embed(PROMPTS).numpy(), ref_c.numpy(), atol=1e-6)
    np.testing.assert_allclose(sd_model.embed([""] * 3).numpy(), ref_u.numpy(), atol=1e-6)


def test_denoiser_matches_the_unet_epsilon_formula(tiny_sd, sd_model):
    """D(z, sigma_t; p) = z - sigma_t eps(z / sqrt(1 + sigma_t^2), t, text(p)) at a discrete timestep, with
    classifier-free guidance on eps: eps_u + w (eps_c - eps_u), text("") for eps_u."""
    import torch

    _, pipe, _ = tiny_sd
    ac = pipe.scheduler.alphas_cumprod.double().numpy()
    t = 37
    sigma = float(np.sqrt((1 - ac[t]) / ac[t]))
    assert sd_model.schedule.sigma_to_t(sigma) == pytest.approx(t, abs=1e-6)
    z = _latents(3)
    inp = torch.from_numpy((z / np.sqrt(1 + sigma**2)).astype(np.float32))
    with torch.no_grad():
        emb_c, emb_u = pipe.encode_prompt(PROMPTS, "cpu", 1, True)
        eps_c = (
            pipe.unet(inp, torch.full((3,), float(t)), encoder_hidden_states=emb_c).sample.double().numpy()
        )
        eps_u = (
            pipe.unet(inp, torch.full((3,), float(t)), encoder_hidden_states=emb_u).sample.double().numpy()
        )
    w = sd_model.guidance
    ref = z - sigma * (eps_u + w * (eps_c - eps_u))
    np.testing.assert_allclose(sd_model.denoise(z, sigma, PROMPTS), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sd_model.denoise(z, sigma), z - sigma * eps_u, rtol=1e-5, atol=1e-5)


def test_guidance_combines_conditional_and_unconditional(tiny_sd, sd_model):
    plain = load_model(f"diffusers:{tiny_sd[0]}", device="cpu", guidance=1.0)
    z, sigma = _latents(3, seed=1), 2.3  # a sigma between two timesteps
    d_u = plain.denoise(z, sigma)
    d_c = plain.denoise(z, sigma, PROMPTS)
    ref = d_u + sd_model.guidance * (d_c - d_u)
    # the guided call runs [uncond; cond] as one float32 batch of 6: its rounding, times w sigma ~ 17
    np.testing.assert_allclose(sd_model.denoise(z, sigma, PROMPTS), ref, rtol=1e-5, atol=1e-4)
    # cond=None is the unconditional model, whatever the guidance: the empty prompt's denoiser
    np.testing.assert_allclose(sd_model.denoise(z, sigma), d_u, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(plain.denoise(z, sigma, [""] * 3), d_u, rtol=1e-6, atol=1e-6)


def test_sample_is_seeded_per_row_and_batch_independent(sd_model):
    m = sd_model
    old = m.batch_size
    m.batch_size = 2  # 3 rows -> two batches
    try:
        a = m.sample(3, seed=5, cond=PROMPTS)
        b = m.sample(3, seed=5, cond=PROMPTS)
        noise = noise_from_seeds(range(3), m.latent_shape, base_seed=5)
        alone = m.sample_from_noise(noise[2:3], PROMPTS[2:3])
    finally:
        m.batch_size = old
    assert a.shape == (3, 3, 16, 16) and a.dtype == np.float32
    assert np.isfinite(a).all() and a.min() >= -1 and a.max() <= 1
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(alone[0], a[2], atol=1e-5)
    assert not np.allclose(m.sample(3, seed=6, cond=PROMPTS), a, atol=1e-4)


def test_prompts_change_samples(sd_model):
    m = sd_model
    cats = m.sample(2, seed=0, cond=["a red cat", "a red cat"])
    dogs = m.sample(2, seed=0, cond=["a blue dog", "a blue dog"])
    uncond = m.sample(2, seed=0)
    assert np.abs(cats - dogs).max() > 1e-3 and np.abs(cats - uncond).max() > 1e-3
    z = m.reverse_from(_latents(2), 1.5, num_steps=2, cond=["a cat", "a dog"])  # white box acts on latents
    assert z.shape == (2, *m.latent_shape) and np.isfinite(z).all()


def test_cond_and_shape_mistakes(sd_model):
    with pytest.raises(DiffauditError, match="one prompt string per sample"):
        sd_model.sample(2, cond=["a cat"])
    with pytest.raises(DiffauditError, match="not one string"):
        sd_model.sample(2, cond="a cat")
    with pytest.raises(DiffauditError, match="latent shape"):
        sd_model.denoise(np.zeros((1, 3, 16, 16)), 1.0)


def test_encode_and_decode_use_the_vae(tiny_sd, sd_model):
    import torch

    _, pipe, _ = tiny_sd
    x = np.random.default_rng(2).uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
    z = sd_model.encode(x)
    with torch.no_grad():
        ref = pipe.vae.encode(torch.from_numpy(x)).latent_dist.mean.double().numpy()
        img = pipe.vae.decode(torch.from_numpy(z.astype(np.float32)) / 0.18215).sample.numpy()
    assert z.shape == (2, 4, 8, 8)
    np.testing.assert_allclose(z, ref * pipe.vae.config.scaling_factor, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sd_model.decode(z), np.clip(img, -1, 1), atol=1e-5)
    with pytest.raises(DiffauditError, match="image shape"):
        sd_model.encode(np.zeros((1, 3, 8, 8)))


def test_snapshot_layouts_load_the_same(tiny_sd, sd_model, tmp_path):
    """A tokenizer as vocab.json + merges.txt (SD snapshots) and weights saved only as the fp16 variant."""
    path, _, tok = tiny_sd
    copy = tmp_path / "snapshot"
    shutil.copytree(path, copy)
    shutil.rmtree(copy / "tokenizer")
    shutil.copytree(tok, copy / "tokenizer")
    for f in copy.glob("*/*.safetensors"):
        f.rename(f.with_name(f.name.replace(".safetensors", ".fp16.safetensors")))
    m = load_model(f"diffusers:{copy}", device="cpu", guidance=7.5)
    np.testing.assert_array_equal(m.embed(PROMPTS).numpy(), sd_model.embed(PROMPTS).numpy())
    z = _latents(2)
    np.testing.assert_array_equal(m.denoise(z, 0.7, PROMPTS[:2]), sd_model.denoise(z, 0.7, PROMPTS[:2]))


def _one_sentence(msg: str) -> bool:
    return msg.endswith(".") and ". " not in msg.rstrip(".")


def test_incomplete_folders_are_one_sentence_errors(tiny_sd, tmp_path):
    path = tiny_sd[0]
    for part in ("vae", "tokenizer"):
        broken = tmp_path / f"no-{part}"
        shutil.copytree(path, broken)
        shutil.rmtree(broken / part)
        with pytest.raises(DiffauditError, match=f"missing {part}/") as e:
            load_model(f"diffusers:{broken}", device="cpu")
        assert "save_pretrained" in str(e.value) and _one_sentence(str(e.value))
    no_index = tmp_path / "no-index"
    shutil.copytree(path, no_index)
    (no_index / "model_index.json").unlink()
    with pytest.raises(DiffauditError, match="no model_index.json") as e:
        load_model(f"diffusers:{no_index}", device="cpu")
    assert _one_sentence(str(e.value))
    empty_weights = tmp_path / "no-weights"
    shutil.copytree(path, empty_weights)
    for f in (empty_weights / "unet").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(DiffauditError, match="cannot load unet/"):
        load_model(f"diffusers:{empty_weights}", device="cpu")


def test_missing_transformers_names_the_extra(tiny_sd, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(DiffauditError, match=r"'transformers'.*pip install 'diffaudit\[diffusers\]'"):
        load_model(f"diffusers:{tiny_sd[0]}", device="cpu")


def test_bad_guidance(tiny_sd):
    with pytest.raises(DiffauditError, match="finite"):
        TextToImageModel(tiny_sd[0], device="cpu", guidance=float("nan"))


def test_harness_memory_estimate_after_a_pipeline_loaded(sd_model):
    """After transformers loads a model, torch.linspace ignores torch.device("meta") in this process: the
    grouped sweeps' memory estimate (a forward pass on the meta device) then mixed devices and raised."""
    from diffaudit.harness.vmap import network_size

    assert network_size("mlp", (8,)) == (284168, 2824)
    assert network_size("unet", (1, 16, 16))[0] > 0
