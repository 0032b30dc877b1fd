"""scikit-learn's bundled 8x8 handwritten digits (UCI optical recognition set; 1,797 real images).

A small real image set for memorization experiments: x is (n, 1, size, size) float32 in [-1, 1]
(sklearn's integer values 0..16 mapped by v / 8 - 1), the digit label the only factor. No download.
The 1,797 images are pairwise distinct (no exact duplicate rows).

``size`` (spec ``digits:size=16``): 8 (default, the images as sklearn ships them), 16 or 32 -- the sizes the
harness UNet takes. Larger sizes are NEAREST-NEIGHBOUR upsampled: each 8x8 pixel becomes a (size / 8)^2 block.
Chosen over zero-padding and over a smooth resize because it is an exact isometry up to one factor: every
distance between two upsampled digits is size / 8 times the 8x8 one, so nearest neighbours, the 1-NN oracle's
labels and its relative residuals, and the copy rule's distance ratios are those of the 8x8 set (the numbers
below hold at every size). Padding with the background (-1) would instead add (size^2 - 64) constant pixels to
every norm, shrinking the relative residual, and leave the digit a small patch of the frame; a bilinear
resize would blur, changing which real digit is nearest. The cost: blocky images, on a 64-dimensional linear
subspace of the size^2 pixels (the covariance has rank <= 64 at every size, as at 8 px, where the border
pixels are constant too; padding or any linear resize has the same rank). Threshold 1's E1 therefore counts any
sample variance off that subspace -- a trained network's non-blocky pixel noise -- as off-support mass: measured
E1 ~ 24 for every small UNet of ``benchmarks/bench_digits.py`` (n = 32 ... 1,497), against <= 0.6 for the
memorizer and oracle controls. The memorization probes (distances) are unaffected. ``spec`` omits ``size`` at its default, so specs (and the sweep cell ids and cache
keys built from them) of 8x8 digits are unchanged.

A finite population (``n_population = 1797``), not a generator: ``generate`` raises, and
``sample(n, seed)`` is the first n images of a permutation keyed by ``seed`` (nested in n; n <= 1797),
so two calls with different seeds overlap by ~ n1 n2 / 1797 images. Disjoint sets come from ONE
permutation: ``split(n_train, n_holdout, seed)`` returns train = ``sample(n_train, seed)`` (its first
n_train images) and holdout = the LAST n_holdout images of the same permutation, read from the end. The two
never share an image when n_train + n_holdout <= 1797 (refused otherwise); train stays nested in n_train
and the holdout nested in n_holdout and independent of n_train, as a data-scaling sweep needs.

``project(x)`` is a 1-nearest-neighbour oracle against the full real set (at the dataset's size): the label of the nearest
real digit (1-NN accuracy on this set is ~98 % under cross-validation) and ``residual`` =
||x - x_nn|| / ||x|| on the [-1, 1] images (0 for an exact copy of a real digit). This measures
closeness to the real set, not a manifold distance: a novel but plausible digit has a residual of
the order of the typical nearest-neighbour distance between real digits (~0.4).

Limitation: with this oracle, threshold 2's "validity" (residual <= tau = 0.1) means "within 10 % of its
norm of one of the 1,797 real digits", i.e. a NEAR-COPY of a real digit (training ones included), not "a
plausible digit": a novel digit is typically invalid (~0.4 > 0.1), and every real image, training copies
too, is valid with residual 0. Validity and the novel-valid rate on digits therefore measure reproduction
of the real set (novelty = not a copy of the TRAINING part of it), not generalization to new digits.
"""

from __future__ import annotations

import numpy as np

from diffaudit.datasets.base import Dataset, Factor, check_n, check_samples, int_param, register
from diffaudit.errors import DiffauditError

_SAMPLE_SALT = 0xD1617
SIZES = (8, 16, 32)  # 8: as shipped; 16 and 32: nearest-neighbour upsampled (module docstring)
_DATA: dict = {}


def load_digits_images(size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits in sklearn's order: (x (1797, 1, size, size) float32 in [-1, 1], labels (1797,) int64),
    cached in memory; ``size`` 16 or 32 repeats each pixel into a (size / 8)^2 block."""
    if "x" not in _DATA:
        from sklearn.datasets import load_digits

        d = load_digits()
        _DATA["x"] = (d.images.astype(np.float32) / 8.0 - 1.0)[:, None]
        _DATA["y"] = d.target.astype(np.int64)
    if size not in _DATA:
        f = int(size) // 8
        _DATA[size] = np.ascontiguousarray(_DATA["x"].repeat(f, axis=2).repeat(f, axis=3))
    return _DATA[size], _DATA["y"]


@register
class Digits(Dataset):
    name = "digits"
    kind = "image"
    residual_is_relative = True  # project()'s residual ||x - x_nn|| / ||x|| is scale-free
    n_population = 1797  # a finite set of real images: sample() and split() never draw more

    def __init__(self, size: int = 8):
        size = int_param(size, "size", self.name, low=1)
        if size not in SIZES:
            raise DiffauditError(f"digits: size={size} is not supported; use size=8, 16 or 32.")
        self.size = size
        self._params = {} if size == 8 else {"size": size}  # the 8 px spec stays "digits" (module docstring)

    @property
    def shape(self) -> tuple[int, ...]:
        return (1, self.size, self.size)

    def images(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole population in sklearn's order: (x (1797, 1, size, size) float32, labels (1797,) int64).
        Shared read-only arrays: copy before writing."""
        return load_digits_images(self.size)

    @property
    def factors(self) -> tuple[Factor, ...]:
        return (Factor("label", kind="categorical", categories=tuple(str(i) for i in range(10))),)

    def _permutation(self, seed: int) -> np.ndarray:
        return np.random.default_rng([_SAMPLE_SALT, int(seed)]).permutation(self.n_population)

    def sample(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(x (n, 1, size, size) float32, z (n, 1) float64 labels): prefix of a seeded permutation."""
        n = check_n(n, self.name)
        if n > self.n_population:
            raise DiffauditError(
                f"digits: n={n} exceeds the {self.n_population} real images; ask for n <= {self.n_population}."
            )
        return self._take(self._permutation(seed)[:n])

    def split(
        self, n_train: int, n_holdout: int, seed: int = 0
    ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """Disjoint ((x_train, z_train), (x_holdout, z_holdout)) from one permutation keyed by ``seed``.

        Train is ``sample(n_train, seed)``; the holdout is the permutation's last ``n_holdout`` images read
        from the end (module docstring). Refuses n_train + n_holdout > 1797: they cannot be disjoint.
        """
        n_train, n_holdout = check_n(n_train, self.name), check_n(n_holdout, self.name)
        N = self.n_population
        if n_train + n_holdout > N:
            raise DiffauditError(
                f"digits: n_train={n_train} + n_holdout={n_holdout} exceeds the {N} real images, so the "
                f"holdout cannot be disjoint from the training set; ask for n_train + n_holdout <= {N}."
            )
        perm = self._permutation(seed)
        return self._take(perm[:n_train]), self._take(perm[::-1][:n_holdout])

    def _take(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.images()
        return x[idx].copy(), y[idx, None].astype(np.float64)

    def generate(self, z: np.ndarray) -> np.ndarray:
        raise DiffauditError(
            "digits: there is no generator for real handwritten digits; use sample(n, seed) to draw real images."
        )

    def project(self, x: np.ndarray, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """(label of the nearest real digit (n, 1), residual (n,) = ||x - x_nn|| / ||x||)."""
        D = self.size * self.size
        x = check_samples(x, self.shape, self.name).reshape(-1, D)
        xb, yb = self.images()
        xb = xb.reshape(-1, D).astype(np.float64)
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
