"""scikit-learn's bundled 8x8 handwritten digits (UCI optical recognition set; 1,797 real images).

A small real image set for memorization experiments: x is (n, 1, 8, 8) float32 in [-1, 1]
(sklearn's integer values 0..16 mapped by v / 8 - 1), the digit label the only factor. No download.

There is no generator: ``generate`` raises. ``sample(n, seed)`` is the first n images of a seeded
permutation (nested in n; n <= 1797).

``project(x)`` is a 1-nearest-neighbour oracle against the full real set: the label of the nearest
real digit (1-NN accuracy on this set is ~98 % under cross-validation) and ``residual`` =
||x - x_nn|| / ||x|| on the [-1, 1] images (0 for an exact copy of a real digit). This measures
closeness to the real set, not a manifold distance: a novel but plausible digit has a residual of
the order of the typical nearest-neighbour distance between real digits (~0.4).
"""

from __future__ import annotations

import numpy as np

from diffaudit.datasets.base import Dataset, Factor, check_n, check_samples, register
from diffaudit.errors import DiffauditError

_SAMPLE_SALT = 0xD1617
_DATA: dict[str, np.ndarray] = {}


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits: (x (1797, 1, 8, 8) float32 in [-1, 1], labels (1797,) int64), cached in memory."""
    if not _DATA:
        from sklearn.datasets import load_digits

        d = load_digits()
        _DATA["x"] = (d.images.astype(np.float32) / 8.0 - 1.0)[:, None]
        _DATA["y"] = d.target.astype(np.int64)
    return _DATA["x"], _DATA["y"]


@register
class Digits(Dataset):
    name = "digits"
    kind = "image"
    residual_is_relative = True  # project()'s residual ||x - x_nn|| / ||x|| is scale-free
    n_total = 1797

    def __init__(self):
        self._params = {}

    @property
    def shape(self) -> tuple[int, ...]:
        return (1, 8, 8)

    @property
    def factors(self) -> tuple[Factor, ...]:
        return (Factor("label", kind="categorical", categories=tuple(str(i) for i in range(10))),)

    def sample(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(x (n, 1, 8, 8) float32, z (n, 1) float64 labels): prefix of a seeded permutation."""
        n = check_n(n, self.name)
        if n > self.n_total:
            raise DiffauditError(
                f"digits: n={n} exceeds the {self.n_total} real images; ask for n <= {self.n_total}."
            )
        x, y = load_digits_images()
        idx = np.random.default_rng([_SAMPLE_SALT, int(seed)]).permutation(self.n_total)[:n]
        return x[idx].copy(), y[idx, None].astype(np.float64)

    def generate(self, z: np.ndarray) -> np.ndarray:
        raise DiffauditError(
            "digits: there is no generator for real handwritten digits; use sample(n, seed) to draw real images."
        )

    def project(self, x: np.ndarray, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """(label of the nearest real digit (n, 1), residual (n,) = ||x - x_nn|| / ||x||)."""
        x = check_samples(x, self.shape, self.name).reshape(-1, 64)
        xb, yb = load_digits_images()
        xb = xb.reshape(-1, 64).astype(np.float64)
        nb = (xb**2).sum(1)
        nn_idx = np.empty(len(x), np.int64)
        dist = np.empty(len(x))
        for i in range(0, len(x), block):  # blocks of (block x 1797) distances, never n x 1797
            q = x[i : i + block]
            d2 = (q**2).sum(1)[:, None] - 2 * q @ xb.T + nb[None]
            j = d2.argmin(1)
            nn_idx[i : i + block] = j
            dist[i : i + block] = np.sqrt(((q - xb[j]) ** 2).sum(1))  # exact re-computation
        res = dist / np.maximum(np.linalg.norm(x, axis=1), 1e-12)
        return yb[nn_idx, None].astype(np.float64), res
