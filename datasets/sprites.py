"""Procedural dSprites-like images (after Matthey et al. 2017, dSprites) with an oracle factor encoder.

One white shape (+1) on a black background (-1), grayscale (n, 1, size, size) float32, size 16 or 32.
Factors (z columns, in this order):

- ``shape`` in {square, ellipse, triangle}, coded 0, 1, 2;
- ``scale`` in [0.5, 1]: the circumradius is R = 0.22 * scale * size (so area ∝ scale²);
- ``orientation`` in radians, in [0, period(shape)): square pi/2, ellipse pi, triangle 2pi/3 -- each
  shape's rotational symmetry, so every image has exactly one orientation value;
- ``posX``, ``posY`` in [0, 1]: the centroid sits at (0.25 + 0.5 pos) * size pixels from the left /
  top edge (posY = 0 is the top row), so every sprite stays inside the image at any scale.

Shapes: square of half-side R/sqrt(2); ellipse with semi-axes R and R/2 (long axis along
``orientation``); equilateral triangle with circumradius R (inradius R/2). All are centred on their
centroid.

Renderer: analytic coverage from a signed distance (pixels) with a one-pixel linear edge,
x = clip(-2 sd, -1, 1) at each pixel centre -- exact area coverage for an axis-aligned straight
edge, a close approximation otherwise. Polygons use the max of their half-plane distances, the
ellipse Quilez's first-order distance estimate. Fully vectorised numpy; half-plane terms are
separable in (row, column), so each edge costs one broadcast add per pixel.

``grid=True`` draws dSprites-style discrete values: 6 scales, 10 orientations per symmetry
period, 32 positions per axis.

Compositional split: ``holdout_region="<shape>-<quadrant>"`` (quadrant topleft/topright/bottomleft/
bottomright; e.g. "triangle-topleft" = triangles with posX < 0.5 and posY < 0.5). ``split="train"``
(default) excludes the region from ``sample``; ``split="all"`` samples the full prior;
``split="heldout"`` samples only the region. ``sample_region(n, seed)`` always returns region samples,
``in_holdout_region(z)`` is the mask, ``region_rate`` the prior mass of the region.

Oracle ``project``: a small CNN factor regressor trained on freshly rendered data of the full prior
(cached on disk under $DIFFAUDIT_CACHE_DIR/oracles, key = renderer + training parameters), then
render-and-compare refinement: Levenberg-Marquardt with finite-difference Jacobians on
(scale, orientation, posX, posY) for every shape the CNN gives probability >= 0.05, keeping the
shape whose render fits best. ``residual`` = ||x - render(z_hat)||_2 / ||x||_2 on the [-1, 1]
image; since nearly every pixel has |x| ≈ 1, this is the RMS pixel error in [-1, 1] units divided
by the RMS pixel magnitude (≈ 1): a scale-free per-pixel error. Measured on 2,000 fresh true samples
at 16 px (default 1,500-step oracle): shape accuracy 99.85 %, residual median 6e-6, q90 3.5e-4, q99
0.06 (refinement stuck in a local minimum); a pixel-moment-matched Gaussian gives >= 0.33. z_hat is
continuous also for ``grid=True`` data (not snapped to the grid). The dataset ``seed`` only seeds the
oracle's training (the sprites have no random structure).
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from pathlib import Path

import numpy as np

from diffaudit.datasets.base import Dataset, Factor, check_n, check_samples, register
from diffaudit.errors import DiffauditError
from diffaudit.paths import cache_root

SHAPES = ("square", "ellipse", "triangle")
PERIODS = np.array([np.pi / 2, np.pi, 2 * np.pi / 3])  # rotational symmetry of each shape
QUADRANTS = ("topleft", "topright", "bottomleft", "bottomright")
MARGIN = 0.25  # centroid range [MARGIN, 1 - MARGIN] of the image side
R_MAX = 0.22  # circumradius at scale 1, as a fraction of the image side
ELLIPSE_ASPECT = 0.5  # minor / major semi-axis
GRID = {"scale": 6, "orientation": 10, "pos": 32}  # values per factor in grid mode (orientation: per period)
RENDER_VERSION = "sprites-render/1"  # bump when the renderer changes (invalidates cached oracles)
ORACLE_VERSION = "sprites-oracle/2"  # bump when the net or its training changes
_SAMPLE_SALT = 0x5B17E
_CHUNK = 4096  # candidate rows drawn per block: fixed, so sample(n1)[0] is a prefix of sample(n2)[0]


def render(z: np.ndarray, size: int = 16, block: int = 512) -> np.ndarray:
    """Render factors z (n, 5) = [shape, scale, orientation, posX, posY] -> (n, 1, size, size) float32."""
    z = np.asarray(z, dtype=np.float64).reshape(-1, 5)
    out = np.empty((len(z), size, size), np.float32)
    shape = np.clip(np.rint(z[:, 0]).astype(np.int64), 0, 2)
    for s in range(3):
        idx = np.flatnonzero(shape == s)
        for i in range(0, len(idx), block):
            j = idx[i : i + block]
            out[j] = _render_shape(s, z[j, 1], z[j, 2], z[j, 3], z[j, 4], size)
    return out[:, None]


def _render_shape(s: int, scale, theta, posx, posy, size: int) -> np.ndarray:
    """(m, size, size) float32 images of shape ``s`` from per-image (m,) parameters."""
    c = np.arange(size, dtype=np.float32) + 0.5  # pixel centres, pixel units
    R = (R_MAX * size) * np.asarray(scale, np.float64)
    cx = (MARGIN + (1 - 2 * MARGIN) * np.asarray(posx, np.float64)) * size
    cy = (MARGIN + (1 - 2 * MARGIN) * np.asarray(posy, np.float64)) * size
    theta = np.asarray(theta, np.float64)

    def plane(phi, scale_=1.0):
        # (cos phi, sin phi)·(px - cx, py - cy) * scale_, separable: column part + row part.
        a, b = np.cos(phi) * scale_, np.sin(phi) * scale_
        col = (a[:, None] * c[None, :]).astype(np.float32)[:, None, :]
        row = (b[:, None] * c[None, :] - (a * cx + b * cy)[:, None]).astype(np.float32)[:, :, None]
        return col + row

    if s == 0:  # square: Chebyshev distance in the rotated frame
        sd = np.maximum(np.abs(plane(theta)), np.abs(plane(theta + np.pi / 2)))
        sd -= (R / np.sqrt(2)).astype(np.float32)[:, None, None]
    elif s == 1:  # ellipse: Quilez's estimate k0 (k0 - 1) / k1 with k0 = |p/r|, k1 = |p/r²|
        a, b = R, ELLIPSE_ASPECT * R
        u = plane(theta, 1.0 / a)  # u / a
        v = plane(theta + np.pi / 2, 1.0 / b)  # v / b
        u *= u
        v *= v
        k0 = np.sqrt(u + v)
        u *= (1.0 / a**2).astype(np.float32)[:, None, None]
        v *= (1.0 / b**2).astype(np.float32)[:, None, None]
        k1 = np.sqrt(u + v)
        k1 += 1e-6
        sd = k0 * (k0 - 1)
        sd /= k1
    else:  # equilateral triangle: max of three half-plane distances minus the inradius R/2
        sd = plane(theta + np.pi / 2)
        np.maximum(sd, plane(theta + np.pi / 2 + 2 * np.pi / 3), out=sd)
        np.maximum(sd, plane(theta + np.pi / 2 + 4 * np.pi / 3), out=sd)
        sd -= (R / 2).astype(np.float32)[:, None, None]
    sd *= -2.0
    np.clip(sd, -1.0, 1.0, out=sd)
    return sd


def _cache_dir() -> Path:
    return cache_root()


_ORACLES: dict[str, object] = {}


@contextlib.contextmanager
def _one_thread():
    """Run torch single-threaded: batches this small gain nothing from more threads, and on a
    shared 2-core machine extra threads oversubscribe the CPU (measured 50x slower under load)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)  # in-process cache: key -> trained torch module


def _make_net(size: int):
    """Small CNN: a 5x5 stride-2 stem, stride-2 3x3 convs down to 4x4, one hidden linear layer.

    Kept small on purpose (~0.2 M multiply-adds per 16x16 image) so it trains on 2 CPU cores in about
    a minute; render-and-compare refinement supplies the last pixel of precision.
    """
    import torch.nn as nn

    layers, ch, s = [nn.Conv2d(1, 16, 5, stride=2, padding=2), nn.ReLU()], 16, size // 2
    while s > 4:
        layers += [nn.Conv2d(ch, 32, 3, stride=2, padding=1), nn.ReLU()]
        ch, s = 32, s // 2
    return nn.Sequential(
        *layers,
        nn.Flatten(),
        nn.Linear(ch * 16, 128),
        nn.ReLU(),
        nn.Linear(128, 12),  # 3 shape logits, scale, posX, posY, (cos k theta, sin k theta) per shape
    )


@register
class Sprites(Dataset):
    name = "sprites"
    kind = "image"
    residual_is_relative = True  # project()'s residual ||x - render(z_hat)|| / ||x|| is scale-free

    def __init__(
        self,
        size: int = 16,
        grid: bool = False,
        holdout_region: str = "none",
        split: str = "train",
        oracle_steps: int = 1500,
        seed: int = 0,
    ):
        if int(size) not in (16, 32):
            raise DiffauditError(f"sprites: size={size} is not supported; use size=16 or size=32.")
        region = str(holdout_region).lower()
        if region != "none":
            shape, _, quad = region.partition("-")
            if shape not in SHAPES or quad not in QUADRANTS:
                valid = [f"{s}-{q}" for s in SHAPES for q in QUADRANTS]
                raise DiffauditError(
                    f"sprites: holdout_region={holdout_region!r} is unknown; use 'none' or one of {', '.join(valid)}."
                )
        if split not in ("train", "all", "heldout"):
            raise DiffauditError(f"sprites: split={split!r} is unknown; use 'train', 'all' or 'heldout'.")
        if split == "heldout" and region == "none":
            raise DiffauditError(
                "sprites: split='heldout' needs a holdout_region, e.g. holdout_region=triangle-topleft."
            )
        if int(oracle_steps) < 1:
            raise DiffauditError(f"sprites: oracle_steps={oracle_steps} must be a positive integer.")
        self.size, self.grid, self.holdout_region, self.split = int(size), bool(grid), region, split
        self.oracle_steps, self.seed = int(oracle_steps), int(seed)
        self._params = {
            "size": self.size,
            "grid": self.grid,
            "holdout_region": region,
            "split": split,
            "oracle_steps": self.oracle_steps,
            "seed": self.seed,
        }

    # ----------------------------------------------------------------------------- contract
    @property
    def shape(self) -> tuple[int, ...]:
        return (1, self.size, self.size)

    @property
    def factors(self) -> tuple[Factor, ...]:
        return (
            Factor("shape", kind="categorical", categories=SHAPES),
            Factor("scale", low=0.5, high=1.0),
            Factor("orientation", low=0.0, high=float(np.pi)),  # upper bound = period of the shape
            Factor("posX", low=0.0, high=1.0),
            Factor("posY", low=0.0, high=1.0),
        )

    def sample(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(x (n, 1, size, size) float32 in [-1, 1], z (n, 5) float64) from the prior of ``split``."""
        n = check_n(n, self.name)
        z = self._draw(n, seed, self.split)
        return self.generate(z), z

    def sample_region(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Samples of the held-out region only (the prior restricted to it)."""
        if self.holdout_region == "none":
            raise DiffauditError(
                "sprites: sample_region needs a holdout_region, e.g. 'sprites:holdout_region=triangle-topleft'."
            )
        n = check_n(n, self.name)
        z = self._draw(n, seed, "heldout")
        return self.generate(z), z

    def generate(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != 5:
            raise DiffauditError(
                f"sprites: factors have shape {z.shape}, expected (n, 5) = [shape, scale, orientation, posX, posY]."
            )
        return render(z, self.size)

    def in_holdout_region(self, z: np.ndarray) -> np.ndarray:
        """(n,) bool: rows of z (n, 5) inside the held-out region (all False without one)."""
        z = np.asarray(z, dtype=np.float64).reshape(-1, 5)
        if self.holdout_region == "none":
            return np.zeros(len(z), bool)
        shape, _, quad = self.holdout_region.partition("-")
        left = z[:, 3] < 0.5 if "left" in quad else z[:, 3] >= 0.5
        top = z[:, 4] < 0.5 if quad.startswith("top") else z[:, 4] >= 0.5
        return (np.rint(z[:, 0]) == SHAPES.index(shape)) & left & top

    @property
    def region_rate(self) -> float:
        """Prior mass of the held-out region under the full prior (1/3 * 1/4), 0 without one."""
        return 0.0 if self.holdout_region == "none" else 1.0 / 12.0

    # ----------------------------------------------------------------------------- sampling
    def _factors_from_uniform(self, U: np.ndarray) -> np.ndarray:
        shape = np.minimum((U[:, 0] * 3).astype(np.int64), 2)
        period = PERIODS[shape]
        if self.grid:

            def snap(u, k):
                return np.minimum((u * k).astype(np.int64), k - 1)

            scale = 0.5 + 0.5 * snap(U[:, 1], GRID["scale"]) / (GRID["scale"] - 1)
            theta = period * snap(U[:, 2], GRID["orientation"]) / GRID["orientation"]
            px = snap(U[:, 3], GRID["pos"]) / (GRID["pos"] - 1)
            py = snap(U[:, 4], GRID["pos"]) / (GRID["pos"] - 1)
        else:
            scale, theta, px, py = 0.5 + 0.5 * U[:, 1], period * U[:, 2], U[:, 3], U[:, 4]
        return np.stack([shape.astype(np.float64), scale, theta, px, py], axis=1)

    def _draw(self, n: int, seed: int, mode: str) -> np.ndarray:
        rng = np.random.default_rng([_SAMPLE_SALT, int(seed)])
        blocks, got = [], 0
        while got < n:
            z = self._factors_from_uniform(rng.random((_CHUNK, 5)))
            if mode != "all" and self.holdout_region != "none":
                m = self.in_holdout_region(z)
                z = z[m] if mode == "heldout" else z[~m]
            blocks.append(z)
            got += len(z)
        return np.concatenate(blocks)[:n] if blocks else np.zeros((0, 5))

    # ----------------------------------------------------------------------------- oracle
    def oracle_params(self) -> dict:
        """Everything that changes the trained oracle (its cache key)."""
        return {
            "renderer": RENDER_VERSION,
            "oracle": ORACLE_VERSION,
            "size": self.size,
            "steps": self.oracle_steps,
            "batch": 128,
            "lr": 2e-3,
            "seed": self.seed,
        }

    def oracle_path(self) -> Path:
        from diffaudit.hashing import params_sha256

        return _cache_dir() / "oracles" / f"sprites-{params_sha256(self.oracle_params())[:24]}.safetensors"

    def oracle(self):
        """The trained CNN factor regressor (trained once, cached on disk and in memory)."""
        from safetensors.torch import load_file, save_file

        from diffaudit.fileio import atomic_path, atomic_write_text

        path = self.oracle_path()
        digest_path = path.with_name(path.name + ".sha256")
        key = str(path)
        if key in _ORACLES:
            return _ORACLES[key]
        net = _make_net(self.size)
        loaded = False
        if path.exists():
            # a cached file cut short (killed mid-copy, disk full, a sync tool) or otherwise damaged must
            # not break every later audit: its sha256 (written beside it) must match, safetensors checks
            # the header against the file size, and load_state_dict the names and shapes; on any failure
            # the oracle is retrained and rewritten. A file without a digest (older caches) is loaded.
            try:
                if digest_path.is_file():
                    want = digest_path.read_text(encoding="ascii").strip()
                    if hashlib.sha256(path.read_bytes()).hexdigest() != want:
                        raise ValueError("sha256 mismatch")
                net.load_state_dict(load_file(str(path)))
                loaded = True
            except Exception as e:  # SafetensorError, OSError, RuntimeError (shapes/keys), ...
                warnings.warn(
                    f"sprites: the cached oracle {path} is damaged ({type(e).__name__}); retraining it.",
                    UserWarning,
                    stacklevel=2,
                )
                net = _make_net(self.size)
        if not loaded:
            with _one_thread():
                self._train(net)
            with atomic_path(path) as tmp:
                save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
                digest = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
            atomic_write_text(digest_path, digest + "\n")
        net.eval()
        _ORACLES[key] = net
        return net

    def _targets(self, z: np.ndarray) -> np.ndarray:
        """(n, 9) regression targets: scale, posX, posY in [0, 1] and (cos k theta, sin k theta) per shape."""
        t = np.zeros((len(z), 9))
        t[:, 0] = (z[:, 1] - 0.5) / 0.5
        t[:, 1:3] = z[:, 3:5]
        shape = z[:, 0].astype(np.int64)
        k = 2 * np.pi / PERIODS[shape]
        t[np.arange(len(z)), 3 + 2 * shape] = np.cos(k * z[:, 2])
        t[np.arange(len(z)), 4 + 2 * shape] = np.sin(k * z[:, 2])
        return t

    def _train(self, net) -> None:
        import torch
        import torch.nn.functional as F

        p = self.oracle_params()
        torch.manual_seed(p["seed"])
        for m in net.modules():  # deterministic init from the seed
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        opt = torch.optim.Adam(net.parameters(), lr=p["lr"])
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=p["lr"], total_steps=p["steps"], pct_start=0.1
        )
        rng = np.random.default_rng([0x0AC1E, p["seed"]])
        net.train()
        for _ in range(p["steps"]):
            U = rng.random((p["batch"], 5))
            z = np.stack(
                [
                    np.minimum((U[:, 0] * 3).astype(np.int64), 2),
                    0.5 + 0.5 * U[:, 1],
                    U[:, 2],
                    U[:, 3],
                    U[:, 4],
                ],
                1,
            )
            z[:, 2] *= PERIODS[z[:, 0].astype(np.int64)]
            x = torch.from_numpy(render(z, self.size))
            t = torch.from_numpy(self._targets(z)).float()
            shape = torch.from_numpy(z[:, 0].astype(np.int64))
            out = net(x)
            loss = F.cross_entropy(out[:, :3], shape) + 4 * F.mse_loss(out[:, 3:6], t[:, :3])
            # orientation: only the true shape's (cos, sin) head is trained
            sel = torch.stack([6 + 2 * shape, 7 + 2 * shape], 1)
            loss = loss + F.mse_loss(out.gather(1, sel), t.gather(1, sel - 3))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        net.eval()

    def predict(self, x: np.ndarray, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """CNN only (no refinement): (z_hat (n, 5), shape probabilities (n, 3))."""
        import torch

        x = check_samples(x, self.shape, self.name).astype(np.float32)
        net = self.oracle()
        outs = []
        with torch.no_grad(), _one_thread():
            for i in range(0, len(x), batch):
                outs.append(net(torch.from_numpy(x[i : i + batch])).double().numpy())
        out = np.concatenate(outs) if outs else np.zeros((0, 12))
        prob = np.exp(out[:, :3] - out[:, :3].max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        shape = prob.argmax(1)
        z = self._decode(out, shape)
        return z, prob

    @staticmethod
    def _decode(out: np.ndarray, shape: np.ndarray) -> np.ndarray:
        i = np.arange(len(out))
        k = 2 * np.pi / PERIODS[shape]
        theta = np.mod(np.arctan2(out[i, 7 + 2 * shape], out[i, 6 + 2 * shape]) / k, PERIODS[shape])
        return np.stack(
            [
                shape.astype(np.float64),
                np.clip(0.5 + 0.5 * out[:, 3], 0.5, 1.0),
                theta,
                np.clip(out[:, 4], 0, 1),
                np.clip(out[:, 5], 0, 1),
            ],
            1,
        )

    def project(
        self, x: np.ndarray, n_iter: int = 10, min_prob: float = 0.05
    ) -> tuple[np.ndarray, np.ndarray]:
        """(z_hat (n, 5), residual (n,) = ||x - render(z_hat)|| / ||x||): CNN + render-and-compare LM."""
        import torch

        x = check_samples(x, self.shape, self.name).astype(np.float32)
        n = len(x)
        if n == 0:
            return np.zeros((0, 5)), np.zeros(0)
        net = self.oracle()
        outs = []
        with torch.no_grad(), _one_thread():
            for i in range(0, n, 4096):
                outs.append(net(torch.from_numpy(x[i : i + 4096])).double().numpy())
        out = np.concatenate(outs)
        prob = np.exp(out[:, :3] - out[:, :3].max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        cand = prob >= min_prob
        cand[np.arange(n), prob.argmax(1)] = True
        rows, shapes = np.nonzero(cand)  # one candidate per (sample, plausible shape)
        z0 = self._decode(out[rows], shapes)
        xf = x.reshape(n, -1)
        z_c, sse = self._refine(z0, xf[rows], n_iter)
        best = np.full(n, np.inf)
        z_hat = np.zeros((n, 5))
        order = np.lexsort((sse, rows))  # by row, then by sse
        first = np.ones(len(order), bool)
        first[1:] = rows[order][1:] != rows[order][:-1]
        pick = order[first]
        z_hat[rows[pick]] = z_c[pick]
        best[rows[pick]] = sse[pick]
        res = np.sqrt(best) / np.maximum(np.linalg.norm(xf.astype(np.float64), axis=1), 1e-12)
        return z_hat, res

    def _refine(self, z: np.ndarray, xf: np.ndarray, n_iter: int) -> tuple[np.ndarray, np.ndarray]:
        """Levenberg-Marquardt on (scale, theta, posX, posY) per candidate; shape held fixed."""
        S = self.size
        z = z.copy()
        lo = np.array([0.5, -np.inf, 0.0, 0.0])
        hi = np.array([1.0, np.inf, 1.0, 1.0])
        # finite-difference steps worth ~0.3 pixel of motion each
        h = np.stack(
            [
                np.full(len(z), 0.3 / (R_MAX * S)),
                0.3 / (R_MAX * S * z[:, 1]),
                np.full(len(z), 0.3 / ((1 - 2 * MARGIN) * S)),
                np.full(len(z), 0.3 / ((1 - 2 * MARGIN) * S)),
            ],
            1,
        )

        def resid(zz, rows):
            return render(zz, S).reshape(len(zz), -1) - xf[rows]

        every = np.arange(len(z))
        r = resid(z, every)
        cost = (r.astype(np.float64) ** 2).sum(1)
        mu = np.full(len(z), 1e-2)
        tol = 1e-10 * xf.shape[1]  # converged to float32 rounding: stop spending renders on it
        for _ in range(n_iter):
            a = np.flatnonzero((cost > tol) & (mu < 1e6))  # active candidates only
            if len(a) == 0:
                break
            za, ra = z[a], r[a]
            J = np.empty((len(a), ra.shape[1], 4), np.float32)
            for p in range(4):
                zp = za.copy()
                zp[:, 1 + p] += h[a, p]
                J[:, :, p] = (resid(zp, a) - ra) / h[a, p, None].astype(np.float32)
            Jt = J.transpose(0, 2, 1)
            JtJ = (Jt @ J).astype(np.float64)
            g = (Jt @ ra[:, :, None])[:, :, 0].astype(np.float64)
            diag = np.einsum("nii->ni", JtJ) + 1e-9
            H = JtJ + (mu[a, None] * diag)[:, :, None] * np.eye(4)
            step = -np.linalg.solve(H, g[:, :, None])[:, :, 0]
            zn = za.copy()
            zn[:, 1:] = np.clip(za[:, 1:] + step, lo, hi)
            rn = resid(zn, a)
            cn = (rn.astype(np.float64) ** 2).sum(1)
            ok = cn < cost[a]
            z[a[ok]], r[a[ok]], cost[a[ok]] = zn[ok], rn[ok], cn[ok]
            mu[a] = np.where(ok, mu[a] * 0.3, mu[a] * 10.0).clip(1e-6, 1e6)
        shape = z[:, 0].astype(np.int64)
        z[:, 2] = np.mod(z[:, 2], PERIODS[shape])
        return z, cost
