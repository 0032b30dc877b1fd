"""Disjoint-split reproducibility: cosine similarity of samples of two models generated from the same
initial noise (Zhang et al. 2023, "The emergence of reproducibility and generalizability in diffusion
models"; Kadkhodaie et al. 2024, "Generalization in diffusion models arises from geometry-adaptive harmonic
representations").

Two models trained on disjoint halves of a dataset that *generalise* map the same noise to nearly the same
sample (RP -> 1); two memorizers map it to their own, different, training items (RP -> 0). The sampling
itself (same noise, deterministic sampler) is done by ``diffaudit.sweeps.reproducibility``; this module
only measures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.probes._checks import as_samples
from diffaudit.probes.stats import wilson_interval

RP_THRESHOLD = 0.6  # Zhang et al. 2023: a pair is "reproduced" when its similarity exceeds 0.6


@dataclass
class RPResult:
    """Result of ``disjoint_reproducibility``: ``similarity`` (n,) cosine similarity of each pair,
    ``rp`` = share of pairs above ``threshold`` with its Wilson 95 % interval, ``mean_similarity``."""

    rp: float
    rp_ci: tuple[float, float] | None
    mean_similarity: float
    similarity: np.ndarray
    threshold: float
    centred: bool
    n: int


def disjoint_reproducibility(
    samples_a, samples_b, threshold: float = RP_THRESHOLD, *, centre: bool = False
) -> RPResult:
    """Reproducibility score RP = P(cos(a_i, b_i) > threshold) over pairs generated from the same noise.

    ``samples_a``, ``samples_b``: (n, ...) samples (or features) of two models, row i of both from the
    same initial noise. Cosine similarity of the flattened pairs. Zhang et al. 2023 compute it on
    SSCD copy-detection embeddings (pass those as features to follow them exactly); on raw pixels we
    follow Kadkhodaie et al. 2024 (uncentred cosine of the images). ``centre=True`` subtracts each
    sample's own mean first (a Pearson correlation, insensitive to a shared background level).
    """
    a = as_samples(samples_a, "samples_a", min_n=1)
    b = as_samples(samples_b, "samples_b", min_n=1)
    if a.shape != b.shape:
        raise DiffauditError(
            f"samples_a has shape {a.shape} but samples_b {b.shape}; generate both from the same noise array."
        )
    A = a.reshape(len(a), -1)
    B = b.reshape(len(b), -1)
    if centre:
        A = A - A.mean(1, keepdims=True)
        B = B - B.mean(1, keepdims=True)
    na = np.linalg.norm(A, axis=1)
    nb = np.linalg.norm(B, axis=1)
    if (na == 0).any() or (nb == 0).any():
        raise DiffauditError(
            "some samples are all zero (or constant with centre=True); cosine similarity is undefined."
        )
    sim = (A * B).sum(1) / (na * nb)
    k = int((sim > threshold).sum())
    return RPResult(
        rp=k / len(sim),
        rp_ci=wilson_interval(k, len(sim)),
        mean_similarity=float(sim.mean()),
        similarity=sim,
        threshold=float(threshold),
        centred=bool(centre),
        n=len(sim),
    )
