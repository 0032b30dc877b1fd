"""Class labels of the synthetic datasets: the first categorical factor is the label.

Sprites' ``shape`` (3 classes), digits' ``label`` (10) and molrg's ``component`` (K) are discrete factors of the
generator; a class-conditional model is trained and audited on them. ``label_factor(dataset)`` finds that factor,
``labels_from_factors(dataset, z)`` reads the labels off true factors, and ``sample_class`` draws fresh samples of
one class from the true generator (by rejection on the label, so the class's conditional distribution is exactly
the generator's, whatever the dataset's prior couples the label with).
"""

from __future__ import annotations

import numpy as np

from diffaudit.errors import DiffauditError


def label_factor(dataset) -> tuple[int, tuple[str, ...]]:
    """(index of the dataset's first categorical factor, its category names); a dataset without one is an error."""
    for i, f in enumerate(getattr(dataset, "factors", ()) or ()):
        if getattr(f, "kind", None) == "categorical" and len(f.categories) >= 2:
            return i, tuple(str(c) for c in f.categories)
    spec = getattr(dataset, "spec", type(dataset).__name__)
    raise DiffauditError(
        f"dataset {spec} has no discrete factor to use as a class label; use a dataset with one "
        "(sprites: shape, digits: label, molrg: component) or pass --train-labels FILE."
    )


def labels_from_factors(dataset, z) -> np.ndarray:
    """The int64 class label (n,) of each row of true factors ``z`` (n, n_factors)."""
    i, names = label_factor(dataset)
    z = np.asarray(z, dtype=np.float64)
    lab = np.rint(z[:, i]).astype(np.int64)
    if len(lab) and (lab.min() < 0 or lab.max() >= len(names)):
        raise DiffauditError(f"factor {i} of {dataset.spec} holds values outside its {len(names)} classes.")
    return lab


def sample_class(
    dataset, label: int, n: int, seed: int, max_rounds: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """(x, z) of ``n`` fresh draws of class ``label`` from ``dataset``'s generator: rounds of the dataset's own
    ``sample`` (seeds derived from ``seed`` and the round) keeping the rows of that class, in draw order.

    A finite dataset (``n_population``, e.g. the 1,797 digits) has no generator to draw rounds from: its whole
    population is permuted once (seeded) and the first ``n`` items of the class are taken, without replacement;
    asking for more than the class holds is an error."""
    _, names = label_factor(dataset)
    label, n = int(label), int(n)
    if not 0 <= label < len(names):
        raise DiffauditError(f"class {label} is outside {dataset.spec}'s classes 0..{len(names) - 1}.")
    pop = getattr(dataset, "n_population", None)
    if pop is not None:
        s = int(np.random.SeedSequence([int(seed), label, 0xC1A55]).generate_state(1, np.uint32)[0] >> 1)
        x, z = dataset.sample(int(pop), s)
        keep = np.flatnonzero(labels_from_factors(dataset, z) == label)
        if n > len(keep):
            raise DiffauditError(
                f"class {label} ({names[label]}) of {dataset.spec} has {len(keep)} items, fewer than the {n} "
                f"asked for; ask for at most {len(keep)}."
            )
        return x[keep[:n]], z[keep[:n]]
    xs, zs, have = [], [], 0
    batch = max(64, 2 * n * len(names))
    for r in range(max_rounds):
        s = int(np.random.SeedSequence([int(seed), label, r, 0xC1A55]).generate_state(1, np.uint32)[0] >> 1)
        x, z = dataset.sample(batch, s)
        keep = labels_from_factors(dataset, z) == label
        xs.append(x[keep])
        zs.append(z[keep])
        have += int(keep.sum())
        if have >= n:
            return np.concatenate(xs)[:n], np.concatenate(zs)[:n]
    raise DiffauditError(
        f"class {label} ({names[label]}) of {dataset.spec} is too rare to sample: {have} of {n} rows after "
        f"{max_rounds} rounds of {batch} draws."
    )


class ClassView:
    """One class of a generator dataset, as a dataset: ``sample(n, seed)`` draws that class only
    (``sample_class``); everything else (``project``, ``factors``, ``shape``, the family's structure) is the
    dataset's own. What a per-class audit compares with: the class's population moments and its true factor
    distribution (a null drawn from the whole dataset would hold every class at once)."""

    n_population = None

    def __init__(self, dataset, label: int):
        if getattr(dataset, "n_population", None) is not None:
            raise DiffauditError(
                f"{dataset.spec} is a finite set of items: a class of it has no generator to draw from."
            )
        self.dataset, self.label = dataset, int(label)
        self.name = f"{dataset.name}-class{self.label}"

    def __getattr__(self, attr):
        if attr in ("dataset", "label"):  # not set yet (unpickling): never recurse
            raise AttributeError(attr)
        return getattr(self.dataset, attr)

    def params(self) -> dict:
        return {**self.dataset.params(), "class": self.label}

    @property
    def spec(self) -> str:
        return f"{self.dataset.spec} [class {self.label}]"

    def sample(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        return sample_class(self.dataset, self.label, n, seed)
