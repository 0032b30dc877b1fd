"""``AuditConfig``: every knob of an audit, checked once when the audit is set up (sklearn-style).

The verdict tolerances have stated meanings (see ``diffaudit.pipeline.verdicts`` and the README):

- ``eps1`` = 0.1: threshold 1 passes when the whitened second-moment error E1 (``probes.moment_error``) is at
  most 0.1. Meaning: the model's second moments are at least as accurate as the empirical second moments of
  (d + kappa) / 0.1 = 10 (d + kappa) true samples (an n-sample estimate scores E[E1] = (d + kappa)/n exactly;
  kappa = 1 for Gaussian data). In eigen-terms E1 is the mean over whitened directions of the squared
  relative error of the second moment plus the off-diagonal mass, so 0.1 is about 32 % RMS relative error
  per direction. The tolerance means the same at every d, and n1* of an n-sample learner is 10 (d + kappa).
- ``min_novel_valid_rate`` = 0.5: threshold 2 needs at least half of the samples valid and novel, and their
  recovered factors distributed like the truth (within what true samples of the same size achieve).
- ``max_copy_rate`` = 0.02: more than 2 % training copies fails memorization (the copy rule's own false-flag
  rate on held-out real data is ~1 %, see ``probes.memorization``).
- ``max_mia_auc`` = 0.6: a loss attack with AUC above 0.6 on a split it was not tuned on leaks membership.
- ``extraction_budget`` = 1000: the extraction attack (Carlini et al. 2023, ``probes.extraction``) gets this many
  generations -- the audit's own samples (1,000 in the demo, 2,000 by default), more drawn only when an audit
  has fewer (``--extraction-budget N``; 0 skips the stage). Reported, not judged: gate it with
  ``--gate 'memorization.extraction_excess<=0'`` (extracted minus the stated bound on chance extractions by a
  generator of fresh data; ``unique_extracted<=0`` fails the oracle by chance when B >> n). At a fixed
  budget the yield of a model that copies its n training items uniformly is known in closed form (the coupon
  collector), so runs of one budget compare; a larger budget finds more (``diffaudit extract``).
- the basin-of-attraction AUC (``basin_*`` options) is reported, not judged: gate it with
  ``--gate 'memorization.basin_auc<=0.6'``.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from dataclasses import asdict, dataclass, field, fields

from diffaudit.errors import DiffauditError

DEFAULT_N_SAMPLES = 2000
# Below this many generated (or held-out) samples a verdict is noisy. Measured false-fail rates of the oracle
# (the true generator), 100 seeds each: memorization 30 / 16 / 11 / 4 / 0 % at 100 / 300 / 500 / 1000 / 2000
# samples (molrg d = 2: the copy rule flags ~1.1 % of fresh samples against a 2 % limit); threshold 1 49 / 22 /
# 7.5 / 0 % at 20 / 50 / 100 / 300 (hidden-manifold d = 16). The report warns below it; it decides anyway.
MIN_RELIABLE_SAMPLES = 1000


@dataclass
class AuditConfig:
    features: str = (
        "pixels"  # feature space spec (diffaudit.features): pixels, pixels:16, inception, clip:ARCH, ...
    )
    n_samples: int | None = (
        None  # generated samples; None = all pre-generated samples, else DEFAULT_N_SAMPLES
    )
    seed: int = 0  # sampling seed of the model (and of every probe's resampling)
    holdout_fraction: float = 0.0  # with --train only: share of train split off as holdout (0 = none; only
    # safe when the model never saw that share)
    device: str = "auto"
    weights: str | None = None  # feature network weights file (inception/clip/dinov2)
    random_init: bool = False  # random feature-network weights: plumbing tests only, reports say so
    # --- threshold 1
    eps1: float = 0.1  # E1 tolerance (module docstring)
    n_boot: int = 10  # bootstrap resamples of the FD floor (each one FD); reported, not a verdict
    boot_max_dim: int = 1024  # above this feature dimension: no floor bootstrap and no FD(generated, train)
    kid_subsets: int = 20  # KID subsets (of kid_subset_size rows each)
    kid_subset_size: int = 1000
    # --- threshold 2
    min_novel_valid_rate: float = 0.5
    # --- memorization
    max_copy_rate: float = 0.02
    max_mia_auc: float = 0.6
    mia_n: int = 2000  # members and non-members (each) for membership inference, subsampled; half of them
    # choose sigma, the other half is reported (TPR at 1 % FPR needs >= 1000 non-members in that half)
    mia_sigmas: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.5)  # x the data std
    mia_draws: int = 2
    # basin of attraction (probes.basin, white box): noise each item to sigma, run the model's reverse process
    # back to 0, and see whether it returns. Cost: 2 basin_n x len(basin_sigmas) x (2 basin_steps - 1) denoiser
    # evaluations = 19,200 at the defaults (about half the membership stage at its defaults, or sampling ~300
    # samples with 32 Heun steps); measured on 2 CPU cores for the memorizer of 8,000 16x16 sprites: 4.0 s (its
    # membership stage: 8.7 s), 22-32 s while 4 other jobs shared the cores.
    basin_n: int = 128  # training and holdout items (each); half of them choose sigma, the other half report
    # x the data's neighbour spacing (median distance from a held-out item to its nearest training item), not
    # the data std: an exact memorizer's basins are about that wide, and the spacing shrinks with n (hidden-
    # manifold d=8 D=2, n=2000: 0.066 std; with sigma = 0.05 ... 1 x the std the memorizer came back for only
    # 59 ... 2 % of its training items, with this grid for 100 ... 73 %)
    basin_sigmas: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.5)
    basin_steps: int = 8  # Heun levels of each reverse run, from sigma down to the model's sigma_min
    basin_quantile: float = 0.01  # return radius: this quantile of holdout -> nearest-training-item distances
    extraction_budget: int = 1000  # generations the extraction attack spends (module docstring)
    max_calibration: int = 2000  # holdout rows that calibrate the copy rule's distance quantile
    max_ct_samples: int = 2000  # C_T and AuthPct use at most this many generated / holdout rows
    n_copies_shown: int = 16  # top copies stored as image pairs / shown in the HTML
    progress: bool = False  # rich progress bars on stderr
    # --- conditional models (diffaudit.pipeline.conditions)
    condition: str | None = None  # None (unconditional model) | "labels" (class-conditional) | "prompts"
    guidance: float | None = None  # classifier-free guidance scale the model was loaded with (recorded)
    # Wen et al.'s detector (probes.cond_memorization): generations per condition and first sampling levels
    # averaged (their defaults: 4 generations; the first step already separates memorized prompts)
    cond_n_gen: int = 4
    cond_n_steps: int = 1
    extra: dict = field(default_factory=dict)  # free-form: recorded in report.inputs.config

    def __post_init__(self):
        # a scalar or a non-numeric entry is left as given: check() refuses it in one sentence
        for name in ("mia_sigmas", "basin_sigmas"):
            with contextlib.suppress(TypeError, ValueError):
                v = getattr(self, name)
                if not isinstance(v, str | bytes):
                    setattr(self, name, tuple(float(s) for s in v))

    def check(self) -> AuditConfig:
        """Raise a one-sentence ``DiffauditError`` for any out-of-range field; returns self."""

        def need(ok: bool, name: str, what: str):
            if not ok:
                raise DiffauditError(f"audit option {name}={getattr(self, name)!r} is out of range: {what}.")

        for f in fields(self):  # counts are whole numbers: 2.7 would be truncated silently, True is no count
            v = getattr(self, f.name)
            if f.type in ("int", "int | None") and v is not None:
                whole = isinstance(v, numbers.Integral) or (isinstance(v, float) and v.is_integer())
                if isinstance(v, bool) or not whole:
                    raise DiffauditError(
                        f"audit option {f.name}={v!r} is not a whole number; pass an integer count."
                    )
        for name in ("mia_sigmas", "basin_sigmas"):
            v = getattr(self, name)
            if not isinstance(v, tuple) or not all(isinstance(s, float) for s in v):
                raise DiffauditError(
                    f"audit option {name}={v!r} is not a list of noise levels; pass a sequence such as "
                    f"({v!r},) or (0.05, 0.1)."
                )

        need(
            self.n_samples is None or int(self.n_samples) >= 2,
            "n_samples",
            "needs at least 2 generated samples",
        )
        need(int(self.seed) >= 0, "seed", "pass a non-negative seed")
        need(0.0 <= self.holdout_fraction < 1.0, "holdout_fraction", "use a share in [0, 1), e.g. 0.2")
        need(self.eps1 > 0, "eps1", "the threshold-1 tolerance must be positive (default 0.1)")
        need(int(self.n_boot) >= 0, "n_boot", "use 0 (no bootstrap) or more resamples")
        need(int(self.boot_max_dim) >= 1, "boot_max_dim", "use a positive dimension")
        need(int(self.kid_subsets) >= 1, "kid_subsets", "use at least 1 subset")
        need(int(self.kid_subset_size) >= 2, "kid_subset_size", "use subsets of at least 2 rows")
        need(0.0 <= self.min_novel_valid_rate <= 1.0, "min_novel_valid_rate", "use a rate in [0, 1]")
        need(0.0 <= self.max_copy_rate <= 1.0, "max_copy_rate", "use a rate in [0, 1]")
        need(0.5 <= self.max_mia_auc <= 1.0, "max_mia_auc", "use an AUC in [0.5, 1]")
        need(int(self.mia_n) >= 4, "mia_n", "use at least 4 members and non-members")
        need(
            len(self.mia_sigmas) >= 1 and all(0 < s < math.inf for s in self.mia_sigmas),
            "mia_sigmas",
            "give positive finite noise levels (x the data std)",
        )
        need(int(self.mia_draws) >= 1, "mia_draws", "use at least 1 noise draw")
        need(
            int(self.basin_n) >= 20,
            "basin_n",
            "use at least 20 training and holdout items (10 of each evaluate the AUC)",
        )
        need(
            len(self.basin_sigmas) >= 1 and all(0 < s < math.inf for s in self.basin_sigmas),
            "basin_sigmas",
            "give positive finite noise levels (x the neighbour spacing)",
        )
        need(int(self.basin_steps) >= 1, "basin_steps", "use at least 1 Heun level")
        need(0.0 < self.basin_quantile < 1.0, "basin_quantile", "use a quantile in (0, 1), e.g. 0.01")
        need(
            int(self.extraction_budget) >= 0,
            "extraction_budget",
            "use 0 (skip the extraction attack) or more generations",
        )
        need(int(self.max_calibration) >= 10, "max_calibration", "use at least 10 calibration rows")
        need(int(self.max_ct_samples) >= 10, "max_ct_samples", "use at least 10 rows")
        need(int(self.n_copies_shown) >= 0, "n_copies_shown", "use 0 or more")
        need(self.condition in (None, "labels", "prompts"), "condition", "use None, 'labels' or 'prompts'")
        need(int(self.cond_n_gen) >= 1, "cond_n_gen", "use at least 1 generation per condition")
        need(int(self.cond_n_steps) >= 1, "cond_n_steps", "use at least 1 sampling level")
        need(
            self.guidance is None
            or (isinstance(self.guidance, numbers.Real) and 0 <= self.guidance < math.inf),
            "guidance",
            "use a finite guidance scale >= 0 (1 = the plain conditional model)",
        )
        return self

    @classmethod
    def from_options(cls, options: dict, where: str = "[audit]") -> AuditConfig:
        """An ``AuditConfig`` from a dict of overrides (a sweep spec's ``[audit]`` table), fully checked."""
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - valid)
        if unknown:
            raise DiffauditError(
                f"{where}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}."
            )
        try:
            cfg = cls(**options)
        except (TypeError, ValueError) as e:
            raise DiffauditError(f"{where}: {e}; fix the option's value.") from None
        return cfg.check()

    def thresholds(self) -> dict[str, float]:
        return {
            "eps1": self.eps1,
            "min_novel_valid_rate": self.min_novel_valid_rate,
            "max_copy_rate": self.max_copy_rate,
            "max_mia_auc": self.max_mia_auc,
        }

    def as_dict(self) -> dict:
        d = asdict(self)
        d["mia_sigmas"] = list(self.mia_sigmas)
        d["basin_sigmas"] = list(self.basin_sigmas)
        return d
