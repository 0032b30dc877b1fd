"""Text-to-image latent diffusion (Stable Diffusion 1.x / 2.x; Rombach et al. 2022, "High-Resolution Image
Synthesis with Latent Diffusion Models") behind the one model contract, as k-diffusion's ``CompVisDenoiser`` wraps
it: the UNet on VAE latents is the EDM denoiser D(z, sigma; prompt) (sigma mapping of
``diffaudit.models.discrete``), guided by classifier-free guidance (Ho & Salimans 2022)
D = D_u + w (D_c - D_u), with D_u the empty-prompt "" model; sampled with the shared EDM Heun sampler, decoded
by the VAE.

What a user needs: a LOCAL pipeline folder, nothing is ever downloaded. Either a folder written by
``StableDiffusionPipeline.save_pretrained(PATH)``, or a Hugging Face snapshot the user downloaded beforehand
(e.g. ``stable-diffusion-v1-5``), holding

    model_index.json
    unet/          config.json + weights (UNet2DConditionModel)
    vae/           config.json + weights (AutoencoderKL)
    text_encoder/  config.json + weights (transformers CLIPTextModel)
    tokenizer/     tokenizer.json, or vocab.json + merges.txt (CLIPTokenizer)
    scheduler/     scheduler_config.json (any scheduler with alphas_cumprod: PNDM, DDIM, DDPM, ...)

``safety_checker/`` and ``feature_extractor/`` are not needed. Weights saved only as the ``fp16`` variant are
read too; every component runs in float32. Needs the optional ``diffusers`` and ``transformers`` packages
(``pip install 'diffaudit[diffusers]'``). Not supported (refused with a one-sentence error): SDXL (extra text
conditioning), inpainting/depth/upscaling UNets (extra input channels).

The model: ``conditioning = "prompts"``; ``shape`` = the decoded image (3, H, W) in [-1, 1]; ``latent_shape``
= (4, h, w), where ``denoise``, ``sample_from_noise`` and ``reverse_from`` act (white-box probes work in latent
space); ``encode`` maps images to latents (the VAE posterior mean times its scaling factor) and ``decode`` back.
``cond=None`` is the unconditional model D_u, on every call; ``guidance`` (w) applies to prompted calls only.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np

from diffaudit.device import resolve_device
from diffaudit.errors import DiffauditError
from diffaudit.models.contract import Model, bind_cond, check_cond
from diffaudit.models.discrete import DiscreteSchedule, scalar_sigma
from diffaudit.models.sampler import heun_sample, noise_from_seeds

__all__ = ["COMPONENTS", "TextToImageModel", "is_text_to_image"]

# component folder -> the files of which one marks it present (the weights are checked when loading)
COMPONENTS = {
    "unet": ("config.json",),
    "vae": ("config.json",),
    "text_encoder": ("config.json",),
    "tokenizer": ("tokenizer.json", "vocab.json"),
    "scheduler": ("scheduler_config.json",),
}


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DiffauditError(
            f"diffusers pipeline {path.parent}: cannot read {path.name} ({type(e).__name__}: {str(e)[:120]}); "
            "save the pipeline again with pipeline.save_pretrained(PATH)."
        ) from None
    return info if isinstance(info, dict) else {}


def is_text_to_image(path) -> bool:
    """Whether the diffusers folder ``path`` is a Stable-Diffusion-family pipeline: its ``model_index.json``
    names a ``StableDiffusion*`` pipeline or a ``UNet2DConditionModel`` unet, or (no model_index.json) its
    ``unet/config.json`` (or its own ``config.json``) is a ``UNet2DConditionModel``. Reads JSON only."""
    path = Path(os.fspath(path)).expanduser()
    index = path / "model_index.json"
    if index.is_file():
        info = _read_json(index)
        unet = info.get("unet")
        named = isinstance(unet, (list, tuple)) and "UNet2DConditionModel" in unet
        return named or str(info.get("_class_name", "")).startswith("StableDiffusion")
    for cfg in (path / "unet" / "config.json", path / "config.json"):
        if cfg.is_file():
            return _read_json(cfg).get("_class_name") == "UNet2DConditionModel"
    return False


def check_pipeline_folder(path: Path) -> None:
    """Refuse a folder that is not a complete pipeline, naming what is missing (loads nothing)."""
    if not path.is_dir():
        raise DiffauditError(
            f"diffusers pipeline {path}: no such folder; pass a pipeline folder saved with save_pretrained."
        )
    if not (path / "model_index.json").is_file():
        raise DiffauditError(
            f"diffusers pipeline {path}: no model_index.json; pass the pipeline's top folder, saved with "
            "pipeline.save_pretrained(PATH) or downloaded as a whole snapshot."
        )
    missing = [
        f"{name}/"
        for name, marks in COMPONENTS.items()
        if not any((path / name / m).is_file() for m in marks)
    ]
    if missing:
        raise DiffauditError(
            f"diffusers pipeline {path}: missing {', '.join(missing)} (a Stable Diffusion pipeline needs "
            f"{', '.join(f'{c}/' for c in COMPONENTS)}); save the whole pipeline with pipeline.save_pretrained(PATH)."
        )


def _backends(where: str):
    """(diffusers, transformers), or a ``DiffauditError`` naming the extra to install."""
    try:
        import diffusers
        import transformers
    except ImportError as e:
        raise DiffauditError(
            f"{where} needs the optional '{(e.name or 'diffusers').split('.')[0]}' package; "
            "pip install 'diffaudit[diffusers]'."
        ) from None
    return diffusers, transformers


@contextlib.contextmanager
def _quiet(*libraries):
    """Silence the libraries' progress bars and info/warning logs while loading, restoring them after."""
    saved = []
    for lib in libraries:
        log = lib.utils.logging
        saved.append((log, log.get_verbosity(), log.is_progress_bar_enabled()))
        log.set_verbosity_error()
        log.disable_progress_bar()
    try:
        yield
    finally:
        for log, verbosity, bar in saved:
            log.set_verbosity(verbosity)
            if bar:
                log.enable_progress_bar()


def _variant(folder: Path) -> str | None:
    """``"fp16"`` when the folder holds only fp16-variant weights (some snapshots do), else None."""
    weights = [f.name for f in folder.iterdir() if f.name.endswith((".safetensors", ".bin", ".index.json"))]
    if weights and all(".fp16." in w for w in weights):
        return "fp16"
    return None


def _load_part(cls, folder: Path, where: str, network: bool = True):
    """``cls.from_pretrained`` on a local folder only; a network in float32 with gradients off."""
    try:
        if not network:
            return cls.from_pretrained(str(folder), local_files_only=True)
        part = cls.from_pretrained(str(folder), local_files_only=True, variant=_variant(folder))
    except Exception as e:
        raise DiffauditError(
            f"{where}: cannot load {folder.name}/ as a {cls.__name__} ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:160]}); save the pipeline with pipeline.save_pretrained(PATH)."
        ) from None
    part = part.float().eval()
    for p in part.parameters():
        p.requires_grad_(False)
    return part


class TextToImageModel(Model):
    """A local Stable-Diffusion-family pipeline folder as a prompt-conditional model (module docstring).

    ``guidance``: the classifier-free guidance scale w of prompted calls (1 = the plain conditional model,
    7.5 = Stable Diffusion's default); ``batch_size``: rows per UNet/VAE call (twice that many go through the
    UNet when guiding); ``sigma_data``: the std of the latents (the VAE's scaling factor makes it about 1),
    which sets EDM's schedule before it is cut to the sigmas the scheduler covers;
    ``max_cached_prompts``: text embeddings kept (per distinct prompt), oldest dropped first.
    """

    conditioning = "prompts"

    def __init__(
        self,
        path,
        *,
        device: str = "auto",
        guidance: float = 7.5,
        num_steps: int = 32,
        batch_size: int = 8,
        sigma_data: float = 1.0,
        max_cached_prompts: int = 4096,
    ):
        path = Path(os.fspath(path)).expanduser()
        where = f"diffusers pipeline {path}"
        self.path = str(path)
        self.name = f"diffusers:{path}"
        guidance = float(guidance)
        if not np.isfinite(guidance):
            raise DiffauditError(
                f"{where}: guidance {guidance} is not a finite number; pass e.g. 7.5 (1 = no guidance)."
            )
        check_pipeline_folder(path)
        diffusers, transformers = _backends(where)
        with _quiet(diffusers, transformers):
            unet = _load_part(diffusers.UNet2DConditionModel, path / "unet", where)
            vae = _load_part(diffusers.AutoencoderKL, path / "vae", where)
            text_encoder = _load_part(transformers.CLIPTextModel, path / "text_encoder", where)
            self.tokenizer = _load_part(transformers.CLIPTokenizer, path / "tokenizer", where, network=False)
        self.schedule = DiscreteSchedule.from_folder(path / "scheduler", where)
        self._check_parts(unet, vae, text_encoder, where)

        self.device = resolve_device(device)
        self.unet = unet.to(self.device)
        self.vae = vae.to(self.device)
        self.text_encoder = text_encoder.to(self.device)
        self.guidance = guidance
        self.batch_size = int(batch_size)
        self.max_cached_prompts = int(max_cached_prompts)
        self.sampler_config = self.schedule.sampler_config(int(num_steps), float(sigma_data))
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)
        size = unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        f = 2 ** (len(vae.config.block_out_channels) - 1)  # the VAE's downsampling factor
        self.latent_shape = (int(unet.config.in_channels), int(h), int(w))
        self.shape = (int(vae.config.out_channels), int(h) * f, int(w) * f)
        max_len = getattr(self.tokenizer, "model_max_length", None) or 77
        self.max_length = int(min(max_len, text_encoder.config.max_position_embeddings))
        self._embeddings: dict = {}  # prompt -> text embedding (L, D) on the device, insertion-ordered

    @staticmethod
    def _check_parts(unet, vae, text_encoder, where: str) -> None:
        cfg = unet.config
        if getattr(cfg, "addition_embed_type", None) is not None:
            raise DiffauditError(
                f"{where}: its UNet needs extra conditioning ({cfg.addition_embed_type!r}, as SDXL does); "
                "only Stable Diffusion 1.x/2.x-style pipelines are supported."
            )
        if int(cfg.in_channels) != int(vae.config.latent_channels):
            raise DiffauditError(
                f"{where}: its UNet takes {cfg.in_channels} input channels but the VAE makes "
                f"{vae.config.latent_channels} (an inpainting, depth or upscaling pipeline?); "
                "only plain text-to-image pipelines are supported."
            )
        cross = cfg.cross_attention_dim
        if isinstance(cross, int) and cross != int(text_encoder.config.hidden_size):
            raise DiffauditError(
                f"{where}: the UNet attends to {cross}-dimensional text but the text encoder makes "
                f"{text_encoder.config.hidden_size}; its components come from different pipelines."
            )

    # ------------------------------------------------------------------------------------------ text

    def embed(self, prompts: list[str]):
        """Text embeddings (n, L, D) of ``prompts`` as Stable Diffusion's ``encode_prompt`` makes them (padded to
        the tokenizer's max length, truncated beyond it; last hidden state), cached per distinct prompt."""
        import torch

        missing = list(dict.fromkeys(p for p in prompts if p not in self._embeddings))
        with torch.no_grad():
            for i in range(0, len(missing), self.batch_size):
                chunk = missing[i : i + self.batch_size]
                tok = self.tokenizer(
                    chunk,
                    padding="max_length",
                    max_length=self.max_length,
                    truncation=True,
                    return_tensors="pt",
                )
                mask = None
                if getattr(self.text_encoder.config, "use_attention_mask", False):
                    mask = tok.attention_mask.to(self.device)
                emb = self.text_encoder(tok.input_ids.to(self.device), attention_mask=mask)[0]
                self._embeddings.update(zip(chunk, emb, strict=True))
        out = torch.stack([self._embeddings[p] for p in prompts])
        while len(self._embeddings) > self.max_cached_prompts:
            self._embeddings.pop(next(iter(self._embeddings)))
        return out

    # ------------------------------------------------------------------------------------------ latents

    def _latents(self, z, what: str) -> np.ndarray:
        z = np.asarray(z, dtype=np.float64)
        if z.ndim != 1 + len(self.latent_shape) or tuple(z.shape[1:]) != self.latent_shape:
            raise DiffauditError(
                f"{self.name}: {what} of shape {z.shape} does not match its latent shape (n, "
                f"{', '.join(map(str, self.latent_shape))}); pass latents, not images (encode them first)."
            )
        return z

    def denoise(self, x: np.ndarray, sigma: float, cond=None) -> np.ndarray:
        """D(z, sigma; prompt) on latents (n, *latent_shape), float64 in/out: the unconditional D_u where
        ``cond`` is None, else D_u + guidance (D_c - D_u) (D_c alone at guidance 1)."""
        import torch

        z = self._latents(x, "denoise input")
        cond = check_cond(self, cond, len(z))
        sigma = scalar_sigma(sigma)
        t = self.schedule.sigma_to_t(sigma)
        c_in = self.schedule.c_in(sigma)
        w = self.guidance
        guided = cond is not None and w != 1.0
        out = np.empty_like(z)
        with torch.no_grad():
            for i in range(0, len(z), self.batch_size):
                zb = z[i : i + self.batch_size]
                m = len(zb)
                inp = torch.from_numpy((zb * c_in).astype(np.float32)).to(self.device)
                if cond is None:
                    emb = self.embed([""] * m)
                elif not guided:
                    emb = self.embed(cond[i : i + m])
                else:  # one UNet call on [uncond; cond], as the diffusers pipeline does
                    emb = self.embed([""] * m + list(cond[i : i + m]))
                    inp = torch.cat([inp, inp])
                tt = torch.full((len(inp),), t, dtype=torch.float32, device=self.device)
                y = self.unet(inp, tt, encoder_hidden_states=emb).sample.double().cpu().numpy()
                if guided:
                    y = y[:m] + w * (y[m:] - y[:m])  # linear in y, so the same as guiding D
                out[i : i + m] = self.schedule.denoised(zb, sigma, y)
        return out

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Latents (n, *latent_shape), float64, of images (n, *shape) in [-1, 1]: the VAE posterior mean,
        shifted and scaled as the pipeline's latents are."""
        import torch

        x = np.asarray(images, dtype=np.float32)
        if x.ndim != 1 + len(self.shape) or tuple(x.shape[1:]) != self.shape:
            raise DiffauditError(
                f"{self.name}: images of shape {x.shape} do not match its image shape (n, "
                f"{', '.join(map(str, self.shape))}); resize them first."
            )
        out = np.empty((len(x), *self.latent_shape), np.float64)
        with torch.no_grad():
            for i in range(0, len(x), self.batch_size):
                xb = torch.from_numpy(x[i : i + self.batch_size]).to(self.device)
                mean = self.vae.encode(xb).latent_dist.mean
                out[i : i + len(xb)] = (
                    ((mean - self.shift_factor) * self.scaling_factor).double().cpu().numpy()
                )
        return out

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Images (n, *shape), float32 clipped to [-1, 1], of latents (n, *latent_shape)."""
        import torch

        z = self._latents(latents, "latents")
        out = np.empty((len(z), *self.shape), np.float32)
        with torch.no_grad():
            for i in range(0, len(z), self.batch_size):
                zb = torch.from_numpy(z[i : i + self.batch_size].astype(np.float32)).to(self.device)
                img = self.vae.decode(zb / self.scaling_factor + self.shift_factor).sample
                out[i : i + len(zb)] = img.clamp(-1, 1).float().cpu().numpy()
        return out

    # ------------------------------------------------------------------------------------------ sampling

    def sample_from_noise(self, noise: np.ndarray, cond=None) -> np.ndarray:
        """Images (n, *shape) from unit-variance latent noise (n, *latent_shape): the EDM Heun sampler on the
        latents, then the VAE decoder."""
        noise = self._latents(noise, "noise")
        cond = check_cond(self, cond, len(noise))
        out = np.empty((len(noise), *self.shape), np.float32)
        bs = self.batch_size
        for i in range(0, len(noise), bs):
            z = heun_sample(bind_cond(self.denoise, cond, i, bs), noise[i : i + bs], self.sampler_config)
            out[i : i + len(z)] = self.decode(z)
        return out

    def sample(self, n: int, seed: int = 0, cond=None) -> np.ndarray:
        """n images; row i starts from latent noise of seed (seed, i), so a row does not depend on its batch."""
        cond = check_cond(self, cond, int(n))
        noise = noise_from_seeds(range(int(n)), self.latent_shape, base_seed=seed)
        return self.sample_from_noise(noise, cond)
