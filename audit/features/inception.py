"""``inception`` / ``inception:fid`` / ``inception:torchvision``: Inception-v3 2048-d pool features.

torchvision Inception-v3 pool features (after the global average pool). Weights from a local file:
``weights=`` / ``--weights`` or env ``DIFFAUDIT_INCEPTION_WEIGHTS``; a torchvision state dict (``.pth``)
or ``.safetensors`` with the same keys. Input: resized to 299 x 299 bilinear (``align_corners=False``)
and fed in [-1, 1], the scaling these (TF-ported) weights expect -- the same as torchvision's
``transform_input=True`` and pytorch-fid's ``normalize_input``.

**Standard FID numbers** need the FID Inception weights ``pt_inception-2015-12-05-6726825d.pth`` (the TF
2015-12-05 graph ported by pytorch-fid; Heusel et al. 2017). A state dict whose ``fc`` has 1008 outputs
is recognised as that file and run through pytorch-fid's FID blocks (average pools that exclude padding,
max pool in the last block), i.e. the pytorch-fid recipe. torchvision's ``IMAGENET1K_V1`` weights
(``inception_v3_google-0cc3c7bd.pth``) run the plain torchvision network and give *different* numbers:
fine for relative comparisons, not comparable to published FIDs. ``inception:fid`` /
``inception:torchvision`` force the architecture (e.g. for random init). Checked once against
pytorch-fid 0.3's ``InceptionV3([3])`` loaded with the same (random) 1008-way state dict: pool features
agree to 2e-7 relative (float32 round-off).

torch/torchvision are imported inside functions: heavy optional dependencies, kept off
``import diffaudit.features``.
"""

from __future__ import annotations

from typing import Any

from diffaudit.errors import DiffauditError
from diffaudit.features.torch_base import TorchEmbedder, load_state_dict, resize

ENV_INCEPTION = "DIFFAUDIT_INCEPTION_WEIGHTS"


class InceptionEmbedder(TorchEmbedder):
    """Inception-v3 2048-d pool features (torchvision network; FID blocks for the FID weights)."""

    name = "inception"
    env_var = ENV_INCEPTION
    what = "Inception-v3"
    size = 299  # input resolution of the FID recipe; tests lower it (>= 75) to stay fast

    def __init__(self, variant: str | None = None, **kw) -> None:
        super().__init__(spec="inception" + (f":{variant}" if variant else ""), **kw)
        self.variant = variant

    @property
    def id(self) -> str:
        arch = self.variant or ("torchvision" if self.random_init else "auto")
        return f"inception-v3:{arch}:{self._weights_tag()}:pool2048:resize{self.size}-bilinear:input[-1,1]"

    def params(self) -> dict[str, Any]:
        return {"size": self.size, "resize": "bilinear", "align_corners": False, "input_range": [-1, 1]}

    def _build(self):
        import torch

        sd = None
        if self.weights_path is not None:
            sd = load_state_dict(self.weights_path, self.what)
            sd = {k: v for k, v in sd.items() if not k.startswith("AuxLogits.")}
            if "fc.weight" not in sd:
                raise DiffauditError(
                    f"Inception-v3 weights {str(self.weights_path)!r} have no fc.weight; pass a torchvision "
                    "inception_v3 or pytorch-fid pt_inception state dict."
                )
        num_classes = int(sd["fc.weight"].shape[0]) if sd is not None else 1000
        variant = self.variant or ("fid" if num_classes == 1008 else "torchvision")
        net = _fid_inception(num_classes) if variant == "fid" else _tv_inception(num_classes)
        if sd is not None:
            try:
                net.load_state_dict(sd, strict=True)
            except RuntimeError as e:
                raise DiffauditError(
                    f"Inception-v3 weights {str(self.weights_path)!r} do not fit the {variant} Inception-v3 "
                    f"({str(e).splitlines()[0][:120]}); pass a torchvision or pytorch-fid Inception state dict."
                ) from None
        net.fc = torch.nn.Identity()
        self.resolved_variant = variant
        return net

    def _preprocess(self, xb):
        return resize(xb.clamp(-1, 1), self.size, "bilinear")


def _tv_inception(num_classes: int):
    from torchvision.models.inception import Inception3

    return Inception3(num_classes=num_classes, aux_logits=False, transform_input=False, init_weights=False)


def _fid_inception(num_classes: int):
    """pytorch-fid's ``fid_inception_v3``: torchvision's graph with the TF pooling of the FID network."""
    import torch
    import torch.nn.functional as F
    from torchvision.models.inception import Inception3, InceptionA, InceptionC, InceptionE

    class FIDInceptionA(InceptionA):
        def _forward(self, x):
            b1 = self.branch1x1(x)
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            bp = self.branch_pool(
                F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
            )
            return [b1, b5, b3, bp]

    class FIDInceptionC(InceptionC):
        def _forward(self, x):
            b1 = self.branch1x1(x)
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            bd = self.branch7x7dbl_1(x)
            for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
                bd = layer(bd)
            bp = self.branch_pool(
                F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
            )
            return [b1, b7, bd, bp]

    class FIDInceptionE(InceptionE):
        max_pool = False  # pytorch-fid: Mixed_7b averages (excluding padding), Mixed_7c max-pools

        def _forward(self, x):
            b1 = self.branch1x1(x)
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
            if self.max_pool:
                bp = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
            else:
                bp = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
            return [b1, b3, bd, self.branch_pool(bp)]

    net = Inception3(num_classes=num_classes, aux_logits=False, transform_input=False, init_weights=False)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE(1280)
    net.Mixed_7c = FIDInceptionE(2048)
    net.Mixed_7c.max_pool = True
    return net
