"""The novel-valid rate: valid samples that are not training copies (threshold 2's first condition).

Copy rule shared with the memorization probe: d1/d2 < 1/3 (Yoon et al. 2023, "Diffusion probabilistic
models generalize when they fail to memorize"), optionally holdout-calibrated (``find_copies``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.probes.factors._common import ci as _ci
from diffaudit.probes.factors._common import flat as _flat
from diffaudit.probes.memorization import find_copies
from diffaudit.probes.neighbors import knn

COPY_RATIO = (
    1.0 / 3.0
)  # d1/d2 < 1/3 => copy (Yoon et al. 2023, "Diffusion probabilistic models generalize ...")


@dataclass
class NoveltyResult:
    """The novel-valid rate: share of ALL generated samples that are valid and not copies (Wilson CI).

    Copy rule (the memorization probe's): nearest/second-nearest training distance ratio
    d1/d2 < ``copy_ratio`` (1/3, Yoon et al. 2023), in data space, and also in factor space when
    factors are given (standardised by the training factors' std). Per-sample arrays (n,):
    ``is_copy``, ``ratio`` (data-space d1/d2; nan when ``is_copy`` was passed in), ``nn_index``,
    ``novel_valid``. Held-out region (compositional split): ``holdout_rate`` = share of generated
    samples that are valid and in the region, against ``reference_holdout_rate`` (true data's share).
    """

    novel_valid_rate: float
    novel_valid_rate_ci: tuple[float, float] | None
    novel_rate_among_valid: float
    novel_rate_among_valid_ci: tuple[float, float] | None
    copy_rate: float
    n: int
    n_valid: int
    n_novel_valid: int
    copy_ratio: float
    is_copy: np.ndarray
    ratio: np.ndarray
    nn_index: np.ndarray
    novel_valid: np.ndarray
    factor_is_copy: np.ndarray | None = None
    holdout_rate: float | None = None
    holdout_rate_ci: tuple[float, float] | None = None
    reference_holdout_rate: float | None = None
    holdout_ratio: float | None = None


def _ratio_rule(
    xq: np.ndarray, xb: np.ndarray, name_q: str, name_b: str, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    D, idx = knn(xq, xb, 2, name_q=name_q, name_b=name_b, device=device)
    d = np.sqrt(np.maximum(D, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(d[:, 1] > 0, d[:, 0] / d[:, 1], np.where(d[:, 0] > 0, np.inf, 0.0))
    return r, idx[:, 0]


def novelty(
    generated,
    train,
    valid_mask,
    *,
    copy_ratio: float = COPY_RATIO,
    is_copy=None,
    holdout=None,
    z_gen=None,
    z_train=None,
    holdout_mask=None,
    reference_holdout_rate: float | None = None,
    device: str = "cpu",
) -> NoveltyResult:
    """Novel-valid rate of ``generated`` (n, *shape) against ``train`` (m, *shape).

    ``valid_mask`` (n,) bool from ``manifold_validity``. ``is_copy`` (n,) bool: pass the memorization
    probe's ``CopyResult.is_copy`` so both probes agree. Otherwise, with ``holdout`` (real samples
    not used in training) the decision is ``memorization.find_copies(generated, train, holdout)``'s
    default (ratio AND holdout-calibrated distance: the ratio rule alone flags ~r^k of fresh samples
    in intrinsic dimension k, 10 % on molrg r = 2); without it, the ratio rule (exact 2-NN, ``knn``). ``z_gen`` (n, F) / ``z_train`` (m, F): oracle factors, adding a factor-space
    copy test (a sample copying in either space is a copy). ``holdout_mask`` (n,) bool: generated
    samples whose factors fall in the held-out region; with ``reference_holdout_rate`` (true data's
    share in the region) gives ``holdout_ratio`` = holdout_rate / reference_holdout_rate. ``device``: the
    caller's torch device, for the k-NN engine (``neighbors.search``, also in ``find_copies``).
    """
    G = _flat(generated, "generated")
    T = _flat(train, "train", min_n=2)
    n = len(G)
    valid = np.asarray(valid_mask, dtype=bool).reshape(-1)
    if len(valid) != n:
        raise DiffauditError(
            f"valid_mask has {len(valid)} entries for {n} generated samples; pass one per sample."
        )
    if is_copy is not None:
        copy = np.asarray(is_copy, dtype=bool).reshape(-1)
        if len(copy) != n:
            raise DiffauditError(
                f"is_copy has {len(copy)} entries for {n} generated samples; pass one per sample."
            )
        ratio = np.full(n, np.nan)
        _, idx = knn(G, T, 1, name_q="generated", name_b="train", device=device)
        nn = idx[:, 0]
    elif holdout is not None:
        cr = find_copies(G, T, _flat(holdout, "holdout", min_n=2), ratio_threshold=copy_ratio, device=device)
        copy, ratio, nn = (
            np.asarray(cr.is_copy, bool),
            np.asarray(cr.ratio, np.float64),
            np.asarray(cr.nn_index),
        )
    else:
        ratio, nn = _ratio_rule(G, T, "generated", "train", device)
        copy = ratio < copy_ratio
    fcopy = None
    if z_gen is not None and z_train is not None:
        zg = np.asarray(z_gen, dtype=np.float64).reshape(n, -1)
        zt = np.asarray(z_train, dtype=np.float64).reshape(len(T), -1)
        sd = zt.std(0)
        sd[sd == 0] = 1.0
        # float64 into the search: it shifts both before its float32 cast (factors far from 0 keep their spread)
        fr, _ = _ratio_rule(zg / sd, zt / sd, "z_gen", "z_train", device)
        fcopy = fr < copy_ratio
        copy = copy | fcopy
    nv = valid & ~copy
    k, kv = int(nv.sum()), int(valid.sum())
    out = NoveltyResult(
        novel_valid_rate=k / n,
        novel_valid_rate_ci=_ci(k, n),
        novel_rate_among_valid=(k / kv) if kv else float("nan"),
        novel_rate_among_valid_ci=_ci(k, kv),
        copy_rate=float(copy.mean()),
        n=n,
        n_valid=kv,
        n_novel_valid=k,
        copy_ratio=float(copy_ratio),
        is_copy=copy,
        ratio=ratio,
        nn_index=nn,
        novel_valid=nv,
        factor_is_copy=fcopy,
    )
    if holdout_mask is not None:
        h = np.asarray(holdout_mask, dtype=bool).reshape(-1)
        if len(h) != n:
            raise DiffauditError(
                f"holdout_mask has {len(h)} entries for {n} generated samples; pass one per sample."
            )
        kh = int((h & valid).sum())
        out.holdout_rate, out.holdout_rate_ci = kh / n, _ci(kh, n)
        if reference_holdout_rate is not None:
            out.reference_holdout_rate = float(reference_holdout_rate)
            out.holdout_ratio = (
                (kh / n) / float(reference_holdout_rate) if reference_holdout_rate > 0 else float("nan")
            )
    return out
