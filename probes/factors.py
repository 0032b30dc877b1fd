"""Latent-factor probes (threshold 2) for synthetic data with known generating factors.

Pure functions on arrays; a dataset enters only by duck typing (``project(x) -> (z_hat, residual)``,
``sample(n, seed) -> (x, z)``, ``factors``), never through ``diffaudit`` orchestration.

- ``manifold_error`` / ``manifold_validity``: oracle-projection residuals relative to the data scale, and
  the valid fraction (residual <= tau) with a Wilson interval;
- ``factor_fidelity``: per-factor 1-D Wasserstein and KS distances of z_hat (valid samples) vs the true
  prior, and coverage of a factor-space partition;
- ``novelty``: the novel-valid rate (valid AND not a copy; ratio rule d1/d2 < 1/3, Yoon et al. 2023), and
  the held-out-combination rate for compositional splits;
- ``hidden_direction_overlap`` (mixed cumulant model): the whitened direction of extremal kurtosis vs the
  hidden direction v; ``union_of_subspaces`` (mixture of low-rank Gaussians);
- ``representation_probe``: ridge probes of activations to factors, held-out R^2 and DCI scores
  (Eastwood & Williams 2018).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.probes._checks import as_features
from diffaudit.probes.neighbors import knn
from diffaudit.probes.stats import wilson_interval

# Default validity threshold, tau = max(TAU_FRACTION * scale, TAU_SLACK * q99(true residuals)).
# Calibrated on hidden-manifold d=32, D=4 (RMS residual per dimension, data std 0.59): true samples
# ~1e-8, a small EDM MLP ~0.02, the gaussian control ~0.13. 0.1 * 0.59 = 0.059 sits near their
# geometric midpoint (0.05), ~3x above the trained model and ~2x below the gaussian.
TAU_FRACTION = 0.1
TAU_SLACK = 2.0  # true residuals are numerical error of the oracle inversion: allow 2x its 99th percentile
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
COPY_RATIO = 1.0 / 3.0  # d1/d2 < 1/3 => copy (Yoon et al. 2023, "Diffusion probabilistic models generalize ...")


def _flat(x, name: str, min_n: int = 1) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim >= 2:
        a = a.reshape(len(a), -1)
    return as_features(a, name, min_n=min_n)


def _ci(k: int, n: int) -> tuple[float, float] | None:
    return wilson_interval(int(k), int(n)) if n > 0 else None


# --------------------------------------------------------------------------------------------- manifold


@dataclass
class ManifoldError:
    """Oracle-projection residuals of ``n`` samples. ``residual`` (n,) in the dataset's units,
    ``relative`` (n,) = residual / scale; ``quantiles`` of ``relative`` at ``QUANTILES``."""

    scale: float
    median: float  # median of relative residual
    mean: float
    quantiles: dict[float, float]
    residual: np.ndarray
    relative: np.ndarray
    z_hat: np.ndarray


@dataclass
class ValidityResult:
    """Fraction of samples with residual <= tau (Wilson 95 % interval) and the residual distribution.

    tau = max(tau_floor, tau_reference): tau_floor = frac * scale, tau_reference = slack * q99 of
    the residuals of fresh true samples. ``valid`` (n,) bool, ``residual`` (n,), ``z_hat`` (n, F).
    """

    valid_rate: float
    valid_rate_ci: tuple[float, float] | None
    n: int
    n_valid: int
    tau: float
    tau_floor: float
    tau_reference: float
    scale: float
    median: float  # median relative residual (residual / scale)
    quantiles: dict[float, float]
    valid: np.ndarray
    residual: np.ndarray
    z_hat: np.ndarray


def residual_scale(dataset, x_ref=None) -> float:
    """The data scale the residuals are measured against.

    ``dataset.residual_scale`` if the dataset defines it (e.g. 1.0 for a relative residual
    ||x - x_proj|| / ||x||); otherwise the per-dimension data std sqrt(mean_j Var x_j) of true
    samples ``x_ref``, the unit of an RMS-per-dimension residual (hidden-manifold).
    """
    s = getattr(dataset, "residual_scale", None)
    if s is not None:
        return float(s)
    if x_ref is None:
        raise DiffauditError("residual_scale needs true samples x_ref when the dataset defines no residual_scale.")
    X = np.asarray(x_ref, dtype=np.float64).reshape(len(x_ref), -1)
    return float(np.sqrt(X.var(0).mean()))


def manifold_error(dataset, x, *, scale: float | None = None, reference=None, n_reference: int = 2000,
                   seed: int = 12345) -> ManifoldError:
    """Residual distribution of ``x`` (n, *shape) under ``dataset.project`` relative to the data scale.

    ``scale``: see ``residual_scale``; when neither given nor defined by the dataset, true samples
    ``reference`` (or ``n_reference`` fresh ones from ``dataset.sample(n_reference, seed)``) set it.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim < 2 or len(x) < 1:
        raise DiffauditError(f"samples: expected an array (n, ...) with n >= 1, got shape {x.shape}.")
    if not np.isfinite(x).all():
        raise DiffauditError("samples: contain NaN or Inf; a model that produces them fails validity by definition.")
    if scale is None:
        scale = getattr(dataset, "residual_scale", None)
    if scale is None:
        ref = reference if reference is not None else dataset.sample(n_reference, seed)[0]
        scale = residual_scale(dataset, ref)
    z_hat, res = dataset.project(x)
    res = np.asarray(res, dtype=np.float64).reshape(-1)
    rel = res / float(scale)
    qs = np.quantile(rel, QUANTILES)
    return ManifoldError(
        scale=float(scale), median=float(np.median(rel)), mean=float(rel.mean()),
        quantiles={float(q): float(v) for q, v in zip(QUANTILES, qs, strict=True)}, residual=res, relative=rel,
        z_hat=np.asarray(z_hat, dtype=np.float64),
    )


def validity_threshold(dataset, *, reference=None, n_reference: int = 2000, seed: int = 12345,
                       frac: float = TAU_FRACTION, slack: float = TAU_SLACK, scale: float | None = None
                       ) -> tuple[float, float, float, float]:
    """Default tau and its parts: ``(tau, tau_floor, tau_reference, scale)``.

    ``reference``: true samples (n_ref, *shape) (fresh ones, never the training set of the audited
    model); default ``dataset.sample(n_reference, seed)``.
    """
    ref = reference if reference is not None else dataset.sample(n_reference, seed)[0]
    if scale is None:
        scale = residual_scale(dataset, ref)
    _, r = dataset.project(np.asarray(ref, dtype=np.float32))
    tau_ref = float(slack) * float(np.quantile(np.asarray(r, dtype=np.float64), 0.99))
    tau_floor = float(frac) * float(scale)
    return max(tau_floor, tau_ref), tau_floor, tau_ref, float(scale)


def manifold_validity(dataset, x, *, tau: float | None = None, reference=None, n_reference: int = 2000,
                      seed: int = 12345, frac: float = TAU_FRACTION, slack: float = TAU_SLACK,
                      scale: float | None = None) -> ValidityResult:
    """Manifold validity: share of samples whose oracle residual is <= tau, with a Wilson interval.

    True samples of an analytic generator have residual ~ 0 (numerical error), so tau cannot come
    from them alone: tau = max(frac * scale, slack * q99(residuals of true samples)); defaults
    ``TAU_FRACTION`` = 0.1 of the data scale and ``TAU_SLACK`` = 2. ``x``: (n, *shape) samples.
    """
    if tau is None:
        tau, tau_floor, tau_ref, scale = validity_threshold(
            dataset, reference=reference, n_reference=n_reference, seed=seed, frac=frac, slack=slack, scale=scale)
    else:
        tau_floor = tau_ref = float("nan")
        if scale is None:
            scale = getattr(dataset, "residual_scale", None)
        if scale is None:
            ref = reference if reference is not None else dataset.sample(n_reference, seed)[0]
            scale = residual_scale(dataset, ref)
    err = manifold_error(dataset, x, scale=scale)
    valid = err.residual <= float(tau)
    n, k = len(valid), int(valid.sum())
    return ValidityResult(
        valid_rate=k / n, valid_rate_ci=_ci(k, n), n=n, n_valid=k, tau=float(tau), tau_floor=tau_floor,
        tau_reference=tau_ref, scale=err.scale, median=err.median, quantiles=err.quantiles, valid=valid,
        residual=err.residual, z_hat=err.z_hat,
    )


# --------------------------------------------------------------------------------------------- fidelity


@dataclass
class FidelityResult:
    """Per-factor distances between z_hat of valid samples and the true prior, and factor-space coverage.

    ``wasserstein[name]``: 1-D W1 in the factor's units (categorical: W1 under the 0/1 metric = total
    variation); ``wasserstein_rel[name]`` = W1 / std of the true factor (categorical: = TV);
    ``ks[name]``: two-sample KS statistic (categorical: max CDF gap over the code order).
    ``coverage``: share of partition cells occupied by true samples that valid samples reach;
    ``reference_coverage``: the same for an equal-size subsample of the true samples.
    """

    names: tuple[str, ...]
    wasserstein: dict[str, float]
    wasserstein_rel: dict[str, float]
    ks: dict[str, float]
    coverage: float
    reference_coverage: float
    n_cells: int
    n_valid: int


def _factor_kind(f) -> str:
    return getattr(f, "kind", "continuous")


def _cells(z: np.ndarray, edges: list, kinds: list[str]) -> np.ndarray:
    """Cell id of each row of z (n, F) under per-factor bin edges (categorical: the code itself)."""
    ids = np.zeros(len(z), np.int64)
    for j, (e, kind) in enumerate(zip(edges, kinds, strict=True)):
        if kind == "categorical":
            b = np.clip(np.rint(z[:, j]).astype(np.int64), 0, e - 1)
            nb = e
        else:
            b = np.searchsorted(e, z[:, j], side="right")
            nb = len(e) + 1
        ids = ids * nb + b
    return ids


def factor_fidelity(z_hat_valid, z_true, factors, *, bins_per_factor: int | None = None, seed: int = 0
                    ) -> FidelityResult:
    """Per-factor 1-D Wasserstein-1 and KS distance between ``z_hat_valid`` (m, F) (the oracle's
    factors of the VALID generated samples) and ``z_true`` (n, F) (fresh prior samples), plus coverage.

    Partition: continuous factors cut at true-sample quantiles into ``bins_per_factor`` equal-mass bins
    (default: the largest b with b^F_cont * prod(K_cat) <= n_true / 10, at least 2); categorical
    factors by category. ``factors``: sequence of objects with ``name`` and ``kind`` (or plain names).
    """
    from scipy import stats as st

    zt = np.asarray(z_true, dtype=np.float64)
    zv = np.asarray(z_hat_valid, dtype=np.float64)
    if zt.ndim != 2 or len(zt) < 2:
        raise DiffauditError(f"z_true: expected (n, F) true factors with n >= 2, got shape {zt.shape}.")
    F = zt.shape[1]
    zv = zv.reshape(-1, F) if zv.size else np.zeros((0, F))
    factors = list(factors)
    if len(factors) != F:
        raise DiffauditError(f"factors: {len(factors)} factor specs for {F} factor columns; pass the dataset's factors.")
    names = tuple(getattr(f, "name", str(f)) for f in factors)
    kinds = [_factor_kind(f) for f in factors]
    W, Wr, K = {}, {}, {}
    for j, (name, kind) in enumerate(zip(names, kinds, strict=True)):
        if len(zv) == 0:
            W[name] = Wr[name] = K[name] = float("nan")
            continue
        if kind == "categorical":
            cats = np.union1d(np.rint(zt[:, j]), np.rint(zv[:, j]))
            pt = np.array([(np.rint(zt[:, j]) == c).mean() for c in cats])
            pv = np.array([(np.rint(zv[:, j]) == c).mean() for c in cats])
            W[name] = Wr[name] = float(0.5 * np.abs(pt - pv).sum())
            K[name] = float(np.abs(np.cumsum(pt) - np.cumsum(pv)).max())
        else:
            W[name] = float(st.wasserstein_distance(zv[:, j], zt[:, j]))
            sd = float(zt[:, j].std())
            Wr[name] = W[name] / sd if sd > 0 else float("nan")
            K[name] = float(st.ks_2samp(zv[:, j], zt[:, j]).statistic)

    n_cats = [max(len(getattr(f, "categories", ()) or ()), int(np.rint(zt[:, j]).max()) + 1)
              if kind == "categorical" else 0 for j, (f, kind) in enumerate(zip(factors, kinds, strict=True))]
    n_cat_cells = int(np.prod([c for c in n_cats if c > 0])) if any(n_cats) else 1
    n_cont = sum(k != "categorical" for k in kinds)
    if bins_per_factor is None:
        target = max(1.0, len(zt) / 10 / n_cat_cells)
        b = int(np.floor(target ** (1.0 / n_cont) + 1e-9)) if n_cont else 1
        bins_per_factor = max(2, b)
    edges = [n_cats[j] if kind == "categorical"
             else np.quantile(zt[:, j], np.arange(1, bins_per_factor) / bins_per_factor)
             for j, kind in enumerate(kinds)]
    cells_true = np.unique(_cells(zt, edges, kinds))
    n_cells = len(cells_true)
    if len(zv):
        reached = np.isin(cells_true, _cells(zv, edges, kinds)).mean()
        m = min(len(zv), len(zt))
        sub = np.random.default_rng(seed).choice(len(zt), size=m, replace=False)
        ref = np.isin(cells_true, _cells(zt[sub], edges, kinds)).mean()
    else:
        reached, ref = 0.0, float("nan")
    return FidelityResult(names=names, wasserstein=W, wasserstein_rel=Wr, ks=K, coverage=float(reached),
                          reference_coverage=float(ref), n_cells=int(n_cells), n_valid=int(len(zv)))


# --------------------------------------------------------------------------------------------- novelty


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


def _ratio_rule(xq: np.ndarray, xb: np.ndarray, name_q: str, name_b: str) -> tuple[np.ndarray, np.ndarray]:
    D, idx = knn(xq, xb, 2, name_q=name_q, name_b=name_b)
    d = np.sqrt(np.maximum(D, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(d[:, 1] > 0, d[:, 0] / d[:, 1], np.where(d[:, 0] > 0, np.inf, 0.0))
    return r, idx[:, 0]


def novelty(generated, train, valid_mask, *, copy_ratio: float = COPY_RATIO, is_copy=None, holdout=None,
            z_gen=None, z_train=None, holdout_mask=None, reference_holdout_rate: float | None = None
            ) -> NoveltyResult:
    """Novel-valid rate of ``generated`` (n, *shape) against ``train`` (m, *shape).

    ``valid_mask`` (n,) bool from ``manifold_validity``. ``is_copy`` (n,) bool: pass the memorization
    probe's ``CopyResult.is_copy`` so both probes agree. Otherwise, with ``holdout`` (real samples
    not used in training) the decision is ``memorization.find_copies(generated, train, holdout)``'s
    default (ratio AND holdout-calibrated distance: the ratio rule alone flags ~r^k of fresh samples
    in intrinsic dimension k, 10 % on molrg r = 2); without it, the ratio rule (exact 2-NN, ``knn``). ``z_gen`` (n, F) / ``z_train`` (m, F): oracle factors, adding a factor-space
    copy test (a sample copying in either space is a copy). ``holdout_mask`` (n,) bool: generated
    samples whose factors fall in the held-out region; with ``reference_holdout_rate`` (true data's
    share in the region) gives ``holdout_ratio`` = holdout_rate / reference_holdout_rate.
    """
    G = _flat(generated, "generated")
    T = _flat(train, "train", min_n=2)
    n = len(G)
    valid = np.asarray(valid_mask, dtype=bool).reshape(-1)
    if len(valid) != n:
        raise DiffauditError(f"valid_mask has {len(valid)} entries for {n} generated samples; pass one per sample.")
    if is_copy is not None:
        copy = np.asarray(is_copy, dtype=bool).reshape(-1)
        if len(copy) != n:
            raise DiffauditError(f"is_copy has {len(copy)} entries for {n} generated samples; pass one per sample.")
        ratio = np.full(n, np.nan)
        _, idx = knn(G, T, 1, name_q="generated", name_b="train")
        nn = idx[:, 0]
    elif holdout is not None:
        from diffaudit.probes.memorization import find_copies

        cr = find_copies(G, T, _flat(holdout, "holdout", min_n=2), ratio_threshold=copy_ratio)
        copy, ratio, nn = np.asarray(cr.is_copy, bool), np.asarray(cr.ratio, np.float64), np.asarray(cr.nn_index)
    else:
        ratio, nn = _ratio_rule(G, T, "generated", "train")
        copy = ratio < copy_ratio
    fcopy = None
    if z_gen is not None and z_train is not None:
        zg = np.asarray(z_gen, dtype=np.float64).reshape(n, -1)
        zt = np.asarray(z_train, dtype=np.float64).reshape(len(T), -1)
        sd = zt.std(0)
        sd[sd == 0] = 1.0
        fr, _ = _ratio_rule((zg / sd).astype(np.float32), (zt / sd).astype(np.float32), "z_gen", "z_train")
        fcopy = fr < copy_ratio
        copy = copy | fcopy
    nv = valid & ~copy
    k, kv = int(nv.sum()), int(valid.sum())
    out = NoveltyResult(
        novel_valid_rate=k / n, novel_valid_rate_ci=_ci(k, n),
        novel_rate_among_valid=(k / kv) if kv else float("nan"), novel_rate_among_valid_ci=_ci(k, kv),
        copy_rate=float(copy.mean()), n=n, n_valid=kv, n_novel_valid=k, copy_ratio=float(copy_ratio),
        is_copy=copy, ratio=ratio, nn_index=nn, novel_valid=nv, factor_is_copy=fcopy,
    )
    if holdout_mask is not None:
        h = np.asarray(holdout_mask, dtype=bool).reshape(-1)
        if len(h) != n:
            raise DiffauditError(f"holdout_mask has {len(h)} entries for {n} generated samples; pass one per sample.")
        kh = int((h & valid).sum())
        out.holdout_rate, out.holdout_rate_ci = kh / n, _ci(kh, n)
        if reference_holdout_rate is not None:
            out.reference_holdout_rate = float(reference_holdout_rate)
            out.holdout_ratio = (kh / n) / float(reference_holdout_rate) if reference_holdout_rate > 0 else float("nan")
    return out


# --------------------------------------------------------------------------------------------- mcm


def mcm_target_kurtosis(beta_v: float) -> float:
    """Excess kurtosis of v.x in the mixed cumulant model: -2 beta_v^2 / (1 + beta_v)^2 (Bardone & Goldt 2024)."""
    b = float(beta_v)
    return -2.0 * b * b / (1.0 + b) ** 2


def excess_kurtosis(s) -> float:
    s = np.asarray(s, dtype=np.float64)
    s = s - s.mean()
    v = (s * s).mean()
    return float((s**4).mean() / (v * v) - 3.0) if v > 0 else float("nan")


@dataclass
class DirectionResult:
    """Hidden-direction recovery on whitened samples.

    ``w_hat`` (d,): unit direction of extremal kurtosis in whitened space; ``overlap`` = |<w_hat, v_w>|
    where v_w = C^{1/2} v / ||C^{1/2} v|| is the whitened-space direction whose projection is
    proportional to v.x (for mcm, C v = v, so v_w = v); ``chance_overlap`` = E|<w, v>| for a random
    unit w, sqrt(2 / (pi d)). ``kurtosis_v`` / ``kurtosis_u``: excess kurtosis of v.x / u.x;
    ``kurtosis_w_hat``: along w_hat; ``target_kurtosis`` for v (mcm: -2 beta_v^2/(1+beta_v)^2).
    ``w_hat_data`` (d,): the data-space direction W w_hat (unit), for inspection.
    """

    overlap: float
    chance_overlap: float
    kurtosis_w_hat: float
    kurtosis_v: float
    kurtosis_u: float | None
    target_kurtosis: float | None
    kurtosis_error: float | None
    w_hat: np.ndarray
    w_hat_data: np.ndarray


def _fastica_kurtosis(Y: np.ndarray, w: np.ndarray, n_iter: int, tol: float) -> np.ndarray:
    """One-unit FastICA fixed point with g(s) = s^3 (Hyvarinen & Oja 1997): w <- E[y (w.y)^3] - 3 w."""
    w = w / np.linalg.norm(w)
    for _ in range(n_iter):
        s = Y @ w
        w_new = (Y * (s**3)[:, None]).mean(0) - 3.0 * w
        nrm = np.linalg.norm(w_new)
        if nrm == 0:
            break
        w_new /= nrm
        done = 1.0 - abs(float(w_new @ w)) < tol
        w = w_new
        if done:
            break
    return w


def hidden_direction_overlap(x, v, *, u=None, target_kurtosis: float | None = None, sign: str | None = None,
                             n_restarts: int = 8, n_iter: int = 200, tol: float = 1e-10, seed: int = 0
                             ) -> DirectionResult:
    """Find the direction of extremal excess kurtosis of whitened samples and its overlap with ``v``.

    ``x`` (n, d); ``v`` (d,) hidden direction; ``u`` (d,) optional spike direction. Candidates: the
    FOBI eigenvectors of E[|y|^2 y y^T] - (d + 2) I (Cardoso 1989; its eigenvalues are the excess
    kurtoses of independent components) and ``n_restarts`` seeded random starts, each refined by the
    FastICA kurtosis fixed point. The winner has the most negative kurtosis (``sign="negative"``),
    the most positive (``"positive"``) or the largest |excess| (None; default: the sign of
    ``target_kurtosis`` when given).
    """
    X = _flat(x, "samples", min_n=10).astype(np.float64)
    n, d = X.shape
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    if len(v) != d:
        raise DiffauditError(f"v has {len(v)} entries but the samples have {d} dimensions; pass the dataset's v.")
    v = v / np.linalg.norm(v)
    mu = X.mean(0)
    Xc = X - mu
    C = Xc.T @ Xc / (n - 1)
    lam, Q = np.linalg.eigh(C)
    if lam.min() <= 1e-12 * max(lam.max(), 1e-300):
        raise DiffauditError("samples: their covariance is singular; pass more samples than dimensions (n > d).")
    W = (Q / np.sqrt(lam)) @ Q.T  # C^{-1/2}
    Csqrt = (Q * np.sqrt(lam)) @ Q.T
    Y = Xc @ W
    if sign is None and target_kurtosis is not None:
        sign = "negative" if target_kurtosis < 0 else "positive"
    # FOBI
    r2 = (Y * Y).sum(1)
    M = (Y * r2[:, None]).T @ Y / n - (d + 2) * np.eye(d)
    ev, E = np.linalg.eigh(M)
    rng = np.random.default_rng(seed)
    starts = [E[:, 0], E[:, -1]] + [rng.standard_normal(d) for _ in range(n_restarts)]
    best, best_key, best_k = None, -np.inf, np.nan
    for w0 in starts:
        w = _fastica_kurtosis(Y, w0, n_iter, tol)
        k = excess_kurtosis(Y @ w)
        key = -k if sign == "negative" else (k if sign == "positive" else abs(k))
        if key > best_key:
            best, best_key, best_k = w, key, k
    v_w = Csqrt @ v
    v_w /= np.linalg.norm(v_w)
    w_data = W @ best
    w_data /= np.linalg.norm(w_data)
    kv = excess_kurtosis(Xc @ v)
    ku = None
    if u is not None:
        uu = np.asarray(u, dtype=np.float64).reshape(-1)
        ku = excess_kurtosis(Xc @ (uu / np.linalg.norm(uu)))
    return DirectionResult(
        overlap=float(abs(best @ v_w)), chance_overlap=float(np.sqrt(2.0 / (np.pi * d))),
        kurtosis_w_hat=float(best_k), kurtosis_v=kv, kurtosis_u=ku,
        target_kurtosis=None if target_kurtosis is None else float(target_kurtosis),
        kurtosis_error=None if target_kurtosis is None else float(kv - target_kurtosis),
        w_hat=best, w_hat_data=w_data,
    )


# --------------------------------------------------------------------------------------------- molrg


@dataclass
class UnionResult:
    """Union-of-subspaces probe (mixture of low-rank Gaussians, Wang et al. 2024).

    ``on_union_rate``: share of samples with max_k ||U_k^T x||^2 / ||x||^2 >= threshold (Wilson CI);
    ``energy`` (n,) that maximum. ``subspace_error``: mean over true components of the projection
    distance ||P_hat - P_k||_F / sqrt(2 r) (0 = same subspace, 1 = orthogonal) after K-subspace
    clustering of the samples and Hungarian matching; ``per_component_error`` (K,); ``labels`` (n,).
    """

    on_union_rate: float
    on_union_rate_ci: tuple[float, float] | None
    subspace_error: float
    per_component_error: np.ndarray
    energy: np.ndarray
    labels: np.ndarray
    threshold: float


def _as_bases(bases, d: int) -> np.ndarray:
    B = np.asarray(bases, dtype=np.float64)
    if B.ndim == 2:
        B = B[None]
    if B.ndim != 3 or B.shape[1] != d:
        raise DiffauditError(f"bases: expected (K, d, r) orthonormal bases with d={d}, got shape {B.shape}.")
    return B


def k_subspaces(X: np.ndarray, K: int, r: int, *, n_init: int = 5, n_iter: int = 50, seed: int = 0
                ) -> tuple[np.ndarray, np.ndarray]:
    """K-subspace clustering (Bradley & Mangasarian 2000; Ho et al. 2003) of linear subspaces through 0:
    alternate assignment by largest projection energy and refit by the top-r right singular vectors.
    Returns ``(bases (K, d, r), labels (n,))`` of the restart with the largest captured energy."""
    rng = np.random.default_rng(seed)
    n, d = X.shape
    best, best_obj = None, -np.inf
    for _ in range(n_init):
        # init: each subspace spanned by r random samples' neighbourhood in angle (seeded)
        B = np.empty((K, d, r))
        for k in range(K):
            c = X[rng.choice(n, size=r, replace=False)].T
            B[k] = np.linalg.qr(c + 1e-9 * rng.standard_normal(c.shape))[0][:, :r]
        labels = np.full(n, -1)
        for _ in range(n_iter):
            E = np.stack([((X @ B[k]) ** 2).sum(1) for k in range(K)], 1)
            new = E.argmax(1)
            if np.array_equal(new, labels):
                break
            labels = new
            for k in range(K):
                Xk = X[labels == k]
                if len(Xk) >= r:
                    B[k] = np.linalg.svd(Xk, full_matrices=False)[2][:r].T
                else:  # empty cluster: restart it on the worst-fitted samples
                    worst = np.argsort(E.max(1) / ((X * X).sum(1) + 1e-300))[:r]
                    B[k] = np.linalg.qr(X[worst].T)[0][:, :r]
        obj = float(np.stack([((X @ B[k]) ** 2).sum(1) for k in range(K)], 1).max(1).sum())
        if obj > best_obj:
            best, best_obj = (B.copy(), labels.copy()), obj
    return best


def union_of_subspaces(x, bases, *, threshold: float = 0.9, n_init: int = 5, seed: int = 0) -> UnionResult:
    """On-union fraction and subspace recovery error for samples ``x`` (n, d) and true ``bases``
    (K, d, r) (orthonormal columns U_k). Matching estimated to true subspaces by the Hungarian
    algorithm on the projection distance."""
    from scipy.optimize import linear_sum_assignment

    X = _flat(x, "samples", min_n=2).astype(np.float64)
    n, d = X.shape
    B = _as_bases(bases, d)
    K, _, r = B.shape
    nrm2 = (X * X).sum(1)
    nrm2[nrm2 == 0] = 1e-300
    energy = np.stack([((X @ B[k]) ** 2).sum(1) for k in range(K)], 1).max(1) / nrm2
    on = energy >= threshold
    Bh, labels = k_subspaces(X, K, r, n_init=n_init, seed=seed)
    P = np.einsum("kdr,ker->kde", B, B)
    Ph = np.einsum("kdr,ker->kde", Bh, Bh)
    cost = np.sqrt(((P[:, None] - Ph[None]) ** 2).sum((-1, -2))) / np.sqrt(2 * r)
    rows, cols = linear_sum_assignment(cost)
    per = cost[rows, cols]
    k_on = int(on.sum())
    return UnionResult(on_union_rate=k_on / n, on_union_rate_ci=_ci(k_on, n), subspace_error=float(per.mean()),
                       per_component_error=per, energy=energy, labels=labels, threshold=float(threshold))


# --------------------------------------------------------------------------------------------- representation


@dataclass
class ReprResult:
    """Linear (ridge) probe of activations to true factors, and DCI scores (Eastwood & Williams 2018).

    ``r2[name]``: held-out R^2 per factor (informativeness = their mean). Importance matrix R (F_act,
    n_factors) = |ridge coefficients| fitted on standardised activations and standardised factors.
    ``disentanglement``: sum_i rho_i (1 - H_K(P_i.)), rho_i = row share of R; ``completeness``:
    mean_j (1 - H_Fact(P_.j)); entropies in base K (factors) / F_act (units).
    """

    r2: dict[str, float]
    informativeness: float
    disentanglement: float
    completeness: float
    importance: np.ndarray
    alpha: float
    n_train: int
    n_test: int


def ridge_fit(A: np.ndarray, Z: np.ndarray, alpha: float) -> np.ndarray:
    """Closed-form ridge without intercept on centred inputs: (A^T A + alpha I)^{-1} A^T Z (float64)."""
    G = A.T @ A
    G[np.diag_indices_from(G)] += alpha
    return np.linalg.solve(G, A.T @ Z)


def _entropy_rows(P: np.ndarray, base: int) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(P > 0, P * np.log(P), 0.0)
    return -t.sum(1) / np.log(max(base, 2))


def representation_probe(activations, z, *, factor_names=None, test_fraction: float = 0.25, alpha: float = 0.01,
                         seed: int = 0) -> ReprResult:
    """Ridge regression from ``activations`` (n, F_act) to true factors ``z`` (n, n_factors), held-out R^2.

    Rows are split at random (``seed``) into train/test (``test_fraction``); activations and factors
    are standardised with the training split's statistics; categorical factors are regressed on their
    codes. ``alpha``: ridge penalty per training sample on the standardised problem (the solve uses
    alpha * n_train); 0.01 keeps nearly collinear units from trading weight (which would blur DCI).
    """
    A = _flat(activations, "activations", min_n=8).astype(np.float64)
    Z = np.asarray(z, dtype=np.float64)
    Z = Z.reshape(len(Z), -1)
    if len(Z) != len(A):
        raise DiffauditError(f"activations have {len(A)} rows but z has {len(Z)}; pass factors of the same samples.")
    nf = Z.shape[1]
    names = tuple(factor_names) if factor_names is not None else tuple(f"z{j}" for j in range(nf))
    if len(names) != nf:
        raise DiffauditError(f"factor_names has {len(names)} names for {nf} factor columns; pass one name per column.")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(A))
    n_test = max(2, int(round(test_fraction * len(A))))
    te, tr = perm[:n_test], perm[n_test:]
    ma, sa = A[tr].mean(0), A[tr].std(0)
    sa[sa == 0] = 1.0
    mz, sz = Z[tr].mean(0), Z[tr].std(0)
    sz[sz == 0] = 1.0
    Atr, Ate = (A[tr] - ma) / sa, (A[te] - ma) / sa
    Ztr, Zte = (Z[tr] - mz) / sz, (Z[te] - mz) / sz
    coef = ridge_fit(Atr, Ztr, alpha * len(tr))
    pred = Ate @ coef
    ss_res = ((Zte - pred) ** 2).sum(0)
    ss_tot = ((Zte - Zte.mean(0)) ** 2).sum(0)
    r2 = np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), np.nan)
    R = np.abs(coef)
    tot = R.sum()
    if tot > 0:
        row = R.sum(1)
        Prow = np.divide(R, row[:, None], out=np.zeros_like(R), where=row[:, None] > 0)
        rho = row / tot
        dis = float((rho * (1.0 - _entropy_rows(Prow, nf))).sum()) if nf > 1 else 1.0
        col = R.sum(0)
        Pcol = np.divide(R, col[None], out=np.zeros_like(R), where=col[None] > 0)
        comp = float((1.0 - _entropy_rows(Pcol.T, R.shape[0])).mean()) if R.shape[0] > 1 else 1.0
    else:
        dis = comp = float("nan")
    return ReprResult(r2={nm: float(v) for nm, v in zip(names, r2, strict=True)}, informativeness=float(np.nanmean(r2)),
                      disentanglement=dis, completeness=comp, importance=R, alpha=float(alpha),
                      n_train=len(tr), n_test=len(te))
