"""A tiny randomly initialised Stable Diffusion pipeline (16 x 16 images), built from configs: no downloads.

``build_tiny_sd(root)`` saves it under ``root / "pipe"`` with ``pipeline.save_pretrained`` and returns (path,
pipeline, legacy tokenizer folder); the ``tiny_sd`` fixture of tests/conftest.py builds it once per session.
"""

import json

import pytest

WORDS = ("a", "photo", "of", "red", "blue", "cat", "dog")
PROMPTS = ["a photo of a red cat", "a blue dog", "a cat"]


def _write_tokenizer(folder, max_length: int) -> None:
    """A CLIP BPE tokenizer as Stable Diffusion snapshots ship it (vocab.json + merges.txt), for WORDS."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in sorted(set("".join(WORDS))):
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    merges = []
    for w in WORDS:  # merge each word left to right into one token
        syms = [*w[:-1], w[-1] + "</w>"]
        while len(syms) > 1:
            pair = f"{syms[0]} {syms[1]}"
            if pair not in merges:
                merges.append(pair)
            vocab.setdefault(syms[0] + syms[1], len(vocab))
            syms = [syms[0] + syms[1], *syms[2:]]
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {  # as stable-diffusion-v1-5's tokenizer_config.json writes them
        "__type": "AddedToken",
        "content": "<|endoftext|>",
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
    }
    cfg = {
        "bos_token": {**special, "content": "<|startoftext|>"},
        "eos_token": special,
        "unk_token": special,
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
        "model_max_length": max_length,
        "tokenizer_class": "CLIPTokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))


def build_tiny_sd(tmp_path_factory):
    """(path, pipeline, legacy tokenizer folder): a 16 x 16 Stable Diffusion pipeline with random weights."""
    diffusers = pytest.importorskip("diffusers")
    transformers = pytest.importorskip("transformers")
    import torch

    root = tmp_path_factory.mktemp("sd")
    _write_tokenizer(root / "tok", max_length=8)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(root / "tok"))
    torch.manual_seed(0)
    text_encoder = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=8,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    unet = diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=16,
    )
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=100,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        steps_offset=1,
        clip_sample=False,
    )
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(root / "pipe"))
    return root / "pipe", pipe, root / "tok"
