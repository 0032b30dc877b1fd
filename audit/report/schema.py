"""The metric schema: one declarative row per metric an audit can report.

Everything that shows, stores or gates a metric reads this table and keeps no list of its own: the audit
stages (which rows each fills), ``report.json`` / ``metrics.parquet``, ``report.html``, ``--gate`` parsing,
``compare``, the sweep's ``thresholds`` fit and the app. A registry test checks that every row is produced
by some stage on the demo's runs and shown by the report and the app, and that every produced metric has a
row. Add a probe = add its rows here (and fill them in a stage).

A row's ``key`` is ``group.name`` as in ``report.json`` (``probes.<group>.<name>``); a key ending in ``*``
is a family (e.g. ``factors.w1_*``: one metric per factor of the dataset).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

SCHEMA = "diffaudit.report/1"
GROUPS = ("convergence", "factors", "memorization")
VERDICTS = ("convergence", "generalization", "memorization")


@dataclass(frozen=True)
class Metric:
    key: str  # "group.name" as in report.json; a trailing "*" makes it a family of metrics
    label: str  # short human label (tables, axes)
    unit: str = ""  # "" for dimensionless; "rate" for a share in [0, 1]
    better: str | None = None  # "lower" | "higher" | None (context, not a score)
    threshold: str | None = None  # the verdict it informs: "convergence" | "generalization" | "memorization"
    needs: tuple[
        str, ...
    ] = ()  # "holdout", "dataset" (synthetic, known factors), "white_box" (denoise(x, sigma)), "images" (c, h, w),
    # "conditional" (a conditional model audited per condition: --condition)
    public: bool = False  # part of the report's public contract (always present, null when not measured)
    sweep: str | None = (
        None  # "n1" | "n2": the sweep's transition metric for that threshold (see sweeps.thresholds)
    )
    help: str = ""  # one sentence: what it measures

    @property
    def group(self) -> str:
        return self.key.partition(".")[0]

    @property
    def name(self) -> str:
        return self.key.partition(".")[2]

    @property
    def is_family(self) -> bool:
        return self.key.endswith("*")


METRICS: tuple[Metric, ...] = (
    # ------------------------------------------------------------------ convergence (threshold 1)
    Metric(
        "convergence.bulk_error",
        "threshold-1 error max(E1, |m|^2)",
        better="lower",
        threshold="convergence",
        sweep="n1",
        help="the statistic threshold 1 compares with eps1: the larger of the whitened second-moment error E1 and "
        "the whitened squared mean shift |m|^2; an n-sample estimate of the data scores about (d + kappa)/n",
    ),
    Metric(
        "convergence.moment_error",
        "whitened 2nd-moment error E1",
        better="lower",
        threshold="convergence",
        help="||E_g[y y^T] - I||_F^2 / d with y whitened by the data population (or holdout); "
        "unbiased whatever the number of generated samples; an n-sample estimate of the data scores (d + kappa)/n",
    ),
    Metric(
        "convergence.mean_shift",
        "whitened mean shift |m|^2",
        better="lower",
        threshold="convergence",
        help="||W (mu_g - mu)||^2: squared mean shift in units of the data's own spread (unbiased); an "
        "n-sample estimate of the mean scores d/n",
    ),
    Metric(
        "convergence.fd",
        "FD (generated vs holdout)",
        better="lower",
        needs=("holdout",),
        public=True,
        help="Frechet distance between the generated and the held-out features",
    ),
    Metric(
        "convergence.fd_train_holdout",
        "FD floor (train vs holdout)",
        needs=("holdout",),
        public=True,
        help="Frechet distance of real data against real data at the same n: FD's finite-sample floor",
    ),
    Metric(
        "convergence.fd_ratio",
        "FD / floor",
        better="lower",
        needs=("holdout",),
        help="FD (generated vs holdout, equal n) divided by the real-vs-real floor",
    ),
    Metric(
        "convergence.fd_equal_n",
        "FD at equal n",
        better="lower",
        needs=("holdout",),
        help="FD of min(n_generated, n_train) generated samples against the holdout",
    ),
    Metric(
        "convergence.fd_gen_train",
        "FD (generated vs train)",
        better="lower",
        needs=("holdout",),
        help="Frechet distance between the generated and the training features",
    ),
    Metric(
        "convergence.kid",
        "KID",
        better="lower",
        needs=("holdout",),
        public=True,
        help="unbiased kernel inception distance (cubic polynomial kernel MMD^2)",
    ),
    Metric(
        "convergence.precision",
        "precision",
        "rate",
        "higher",
        needs=("holdout",),
        public=True,
        help="share of generated samples inside the real k-NN balls (Kynkaanniemi et al. 2019)",
    ),
    Metric(
        "convergence.recall",
        "recall",
        "rate",
        "higher",
        needs=("holdout",),
        public=True,
        help="share of real samples inside the generated k-NN balls",
    ),
    Metric(
        "convergence.density",
        "density",
        better="higher",
        needs=("holdout",),
        public=True,
        help="Naeem et al. 2020 density (1 for matching distributions)",
    ),
    Metric(
        "convergence.coverage",
        "coverage",
        "rate",
        "higher",
        needs=("holdout",),
        public=True,
        help="share of real k-NN balls that contain a generated sample (Naeem et al. 2020)",
    ),
    # ------------------------------------------------------------------ factors (threshold 2)
    Metric(
        "factors.validity",
        "valid rate",
        "rate",
        "higher",
        "generalization",
        ("dataset",),
        public=True,
        help="share of samples on the data manifold (scale-free oracle residual below tau)",
    ),
    Metric(
        "factors.novel_valid_rate",
        "novel-valid rate",
        "rate",
        "higher",
        "generalization",
        ("dataset",),
        public=True,
        help="share of samples that are valid AND not a training copy",
    ),
    Metric(
        "factors.novel_rate_among_valid",
        "novel among valid",
        "rate",
        "higher",
        needs=("dataset",),
        help="share of the valid samples that are not training copies",
    ),
    Metric(
        "factors.residual_median",
        "median residual",
        better="lower",
        needs=("dataset",),
        help="median scale-free oracle residual of the generated samples",
    ),
    Metric(
        "factors.factor_coverage",
        "factor coverage",
        "rate",
        "higher",
        "generalization",
        ("dataset",),
        help="share of the factor-space cells of the true distribution that novel-valid samples reach",
    ),
    Metric(
        "factors.recovery_score",
        "recovery score",
        "rate",
        "higher",
        "generalization",
        ("dataset",),
        sweep="n2",
        help="latent-factor recovery in [0, 1]: novel-valid rate x share of factors whose "
        "distribution matches the truth within what true samples of the same size achieve",
    ),
    Metric(
        "factors.w1_*",
        "W1 / std of factor",
        better="lower",
        needs=("dataset",),
        help="1-D Wasserstein distance of a recovered factor to its true distribution, relative to its std",
    ),
    # ------------------------------------------------------------------ memorization
    Metric(
        "memorization.copy_rate",
        "copy rate",
        "rate",
        "lower",
        "memorization",
        public=True,
        help="share of generated samples that are copies of a training item (the default rule)",
    ),
    Metric(
        "memorization.unique_train_copied",
        "training items copied",
        better="lower",
        public=True,
        help="number of distinct training items reproduced by at least one copy",
    ),
    Metric(
        "memorization.n_copies",
        "copies",
        better="lower",
        help="number of generated samples flagged as copies",
    ),
    Metric(
        "memorization.copy_rate_ratio",
        "copy rate (ratio rule)",
        "rate",
        "lower",
        help="copies by the d1/d2 < 1/3 rule alone (Yoon et al. 2023)",
    ),
    Metric(
        "memorization.copy_rate_holdout",
        "copy rate (holdout rule)",
        "rate",
        "lower",
        needs=("holdout",),
        help="copies by the holdout-calibrated distance quantile alone",
    ),
    Metric(
        "memorization.copy_rate_ratio_and_holdout",
        "copy rate (both rules)",
        "rate",
        "lower",
        needs=("holdout",),
        help="copies by both rules at once",
    ),
    Metric(
        "memorization.copy_rate_partial",
        "partial-copy rate",
        "rate",
        "lower",
        needs=("holdout", "images"),
        help="share of generated images that reproduce a region (a quarter of the image) of one training image, "
        "found tile-wise (Somepalli et al. 2023)",
    ),
    Metric(
        "memorization.unique_extracted",
        "training items extracted (attack)",
        better="lower",
        help="distinct training items extracted by Carlini et al. 2023's attack from extraction_budget generations: "
        "clusters of >= 2 near-identical generations whose leader is a training copy",
    ),
    Metric(
        "memorization.extraction_excess",
        "training items extracted beyond chance",
        better="lower",
        needs=("holdout",),
        help="unique_extracted minus the stated bound on chance extractions by a generator of fresh data, "
        "min(n, B^2 q^2 / (2 n)) (q = 0.01, the copy rule's holdout quantile); > 0 = more extracted than chance",
    ),
    Metric(
        "memorization.extraction_yield",
        "extraction yield per generation",
        "rate",
        "lower",
        help="training items extracted per generation at the extraction budget (unique_extracted / budget); a "
        "memorizer of n items scores about (n/B)(1 - e^(-B/n) - (B/n) e^(-B/n))",
    ),
    Metric(
        "memorization.ct",
        "C_T data-copying statistic",
        needs=("holdout",),
        help="Meehan et al. 2020 test statistic: strongly negative = data copying",
    ),
    Metric(
        "memorization.auth_pct",
        "authenticity",
        "rate",
        "higher",
        needs=("holdout",),
        help="share of authentic samples (Alaa et al. 2022); compare with auth_pct_reference",
    ),
    Metric(
        "memorization.auth_pct_reference",
        "authenticity of real data",
        "rate",
        needs=("holdout",),
        help="the same authenticity statistic for held-out real data against the training set",
    ),
    Metric(
        "memorization.mia_auc",
        "membership-inference AUC",
        "rate",
        "lower",
        "memorization",
        ("holdout", "white_box"),
        help="AUC of the loss attack on a split not used to choose sigma",
    ),
    Metric(
        "memorization.mia_tpr_at_1pct",
        "MIA TPR at 1 % FPR",
        "rate",
        "lower",
        needs=("holdout", "white_box"),
        help="true-positive rate at 1 % false positives (only with >= 1000 evaluation non-members)",
    ),
    Metric(
        "memorization.cond_score",
        "guidance magnitude (Wen et al.)",
        better="lower",
        needs=("white_box", "conditional"),
        help="Wen et al. 2024's detector: the per-coordinate magnitude of eps(x, c) - eps(x, null) at the first "
        "sampling step, averaged over generations; per condition its own, overall the largest (the most suspect)",
    ),
    Metric(
        "memorization.cond_flagged",
        "conditions flagged by the detector",
        better="lower",
        needs=("white_box", "conditional"),
        help="conditions whose guidance magnitude is a robust outlier above the audited conditions' bulk, at a "
        "family-wise false-flag rate of 5 % for an audit of generalizing conditions (needs >= 10 conditions)",
    ),
    Metric(
        "memorization.cond_auc",
        "detector AUC vs known memorized",
        "rate",
        "higher",
        needs=("white_box", "conditional"),
        help="ROC AUC of the guidance magnitude against the memorized / not memorized labels of the prompts file "
        "(how well the detector separates them on this model)",
    ),
    Metric(
        "memorization.basin_auc",
        "basin-of-attraction AUC",
        "rate",
        "lower",
        needs=("holdout", "white_box"),
        help="AUC of how much closer training items come back than held-out ones when noised to sigma and run "
        "through the model's reverse process, on a split not used to choose sigma",
    ),
    Metric(
        "memorization.basin_return_train",
        "basin return rate (train)",
        "rate",
        needs=("holdout", "white_box"),
        help="share of training items the reverse process brings back within the holdout-calibrated radius, "
        "at the chosen sigma; compare with the holdout's",
    ),
    Metric(
        "memorization.basin_return_holdout",
        "basin return rate (holdout)",
        "rate",
        needs=("holdout", "white_box"),
        help="share of held-out items brought back within the same radius at the same sigma: a model that "
        "generalizes returns both sets alike",
    ),
)

_BY_KEY = {m.key: m for m in METRICS}


def get(key: str) -> Metric | None:
    """The row of ``key`` (``group.name``), a family row when ``key`` matches one, or None."""
    if key in _BY_KEY:
        return _BY_KEY[key]
    for m in METRICS:
        if m.is_family and fnmatch.fnmatchcase(key, m.key) and key != m.key[:-1]:
            return m
    return None


def public_keys() -> dict[str, tuple[str, ...]]:
    """``{group: names}`` of the public contract (always present in ``report.json``)."""
    return {g: tuple(m.name for m in METRICS if m.public and m.group == g) for g in GROUPS}


def gate_keys() -> list[str]:
    """Every ``group.name`` a gate may name (families shown with their ``*``)."""
    return [m.key for m in METRICS]


def sweep_metric(which: str) -> Metric:
    """The sweep's transition metric of threshold ``which`` ("n1" or "n2")."""
    return next(m for m in METRICS if m.sweep == which)


def label(key: str) -> str:
    m = get(key)
    if m is None:
        return key
    return m.label if not m.is_family else f"{m.label} ({key.partition('.')[2][len(m.name) - 1 :]})"
