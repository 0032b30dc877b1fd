"""Audits of conditional models: which condition each row belongs to, and the per-condition audit.

A class-conditional model (``--condition labels``) is sampled per class -- balanced (generated sample i has class
i mod K) or with the labels of a file -- and a text-conditional one (``--condition prompts``) per prompt. The
whole audit runs as for any model on all samples together (the overall verdicts). Then ``per_condition`` audits
each condition on its own rows: the model restricted to that condition (``FixedCondition``, an unconditional
``Model``), its generated rows, and the training and held-out rows of that condition, through the same stage
functions (second moments and FD against the condition's holdout, copies, C_T, membership inference with the
condition given, factor recovery). The report gains ``conditions``: one entry per class or prompt with
``condition``, ``n_train``, ``verdict`` and its metrics.

Copies per condition are read off the overall copy search (every generated row against the WHOLE training set, so
a class-c sample that copies an item of another class is still a copy), sliced to the condition's rows.

Per-condition verdicts use the overall rules and tolerances (``diffaudit.pipeline.verdicts``) on the condition's
metrics, except memorization, which must hold for K conditions at once on a few hundred samples each: a condition
fails memorization when its copy rate is ABOVE ``max_copy_rate`` with one-sided confidence 1 - 0.05 / K (the
exact binomial test, Bonferroni over the K conditions), or its membership AUC is above ``max_mia_auc`` at the same
confidence (normal bound from the AUC's DeLong standard error). A generator of fresh data (copy rule false-flag rate ~1 %) then fails some condition in at most
5 % of audits whatever K, while a condition whose samples copy its few training items (rate near 1) fails at any
sample size above a handful.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.stats import binom

from diffaudit.errors import DiffauditError
from diffaudit.models.contract import Model, check_cond
from diffaudit.pipeline.setup import check_n_classes, holdout_indices
from diffaudit.probes.stats import wilson_interval, z_value

FAMILY_ALPHA = 0.05  # the chance that an audit of a model with no copies fails some condition's memorization


@dataclass
class Conditions:
    """The conditions of an audit and the condition of every row.

    ``values[j]``: what the model is given for condition j (an int class label or a prompt string); ``names[j]``:
    how reports show it; ``gen`` (n_gen,), ``train`` (n_train,), ``holdout`` (n_holdout,) or None: the condition
    index of each row, -1 for a row tied to no condition (a training image no prompt names).
    ``source``: "balanced" (generated row i has condition i mod K) or "file" (the labels of a file, cycled when
    an attack draws more generations than the file has rows).
    """

    kind: str  # "labels" | "prompts"
    values: list
    names: list[str]
    gen: np.ndarray
    train: np.ndarray | None
    holdout: np.ndarray | None
    source: str = "balanced"
    memorized: list | None = None  # per condition: True / False / None (unknown), from a prompts file

    def __len__(self) -> int:
        return len(self.values)

    def index_of_generation(self, start: int, n: int) -> np.ndarray:
        """Condition index of generations ``start .. start + n - 1`` of the model's stream (the audit's samples
        first, then more for the extraction attack, cycling the same pattern)."""
        i = np.arange(int(start), int(start) + int(n))
        return self.gen[i % len(self.gen)]

    def cond(self, idx: np.ndarray):
        """The model's ``cond`` for rows of condition indices ``idx``: an int64 array or a list of prompts."""
        if self.kind == "labels":
            return np.asarray(self.values, dtype=np.int64)[np.asarray(idx, dtype=np.int64)]
        return [self.values[int(j)] for j in idx]

    def summary(self) -> dict:
        return {
            "kind": self.kind,
            "n_conditions": len(self.values),
            "source": self.source,
            "names": list(self.names),
        }


class FixedCondition(Model):
    """A conditional model restricted to one condition, as an unconditional ``Model``: what an audit of one class
    (or one prompt) samples, denoises and attacks. White box when the model is."""

    def __init__(self, model, value, name: str):
        self.model = model
        self.value = value
        self.name = f"{getattr(model, 'name', type(model).__name__)} [{name}]"
        self.shape = tuple(getattr(model, "shape", ()) or ())
        for attr in ("sampler_config", "batch_size", "sigma_data", "latent_shape", "n_available"):
            if hasattr(model, attr):
                setattr(self, attr, getattr(model, attr))

    def _cond(self, n: int):
        return (
            np.full(int(n), int(self.value), np.int64)
            if self.model.conditioning == "labels"
            else [self.value] * int(n)
        )

    @property
    def has_denoiser(self) -> bool:
        return bool(getattr(self.model, "has_denoiser", False))

    def sample(self, n: int, seed: int = 0, cond=None) -> np.ndarray:
        return self.model.sample(int(n), seed, cond=self._cond(n))

    def denoise(self, x, sigma, cond=None):
        return self.model.denoise(x, sigma, self._cond(len(x)))

    def sample_from_noise(self, noise, cond=None):
        return self.model.sample_from_noise(noise, self._cond(len(noise)))


def label_conditions(
    model,
    n_gen: int,
    train_labels,
    holdout_labels=None,
    sample_labels=None,
    class_names=None,
) -> Conditions:
    """The conditions of a class-conditional audit: K = the model's ``n_classes`` (else the training labels'
    largest + 1), balanced sampling unless ``sample_labels`` (one label per generated sample) are given."""
    if train_labels is None:
        raise DiffauditError(
            "--condition labels needs the training set's labels: a synthetic --dataset with a discrete factor, "
            "or --train-labels FILE."
        )
    k = getattr(model, "n_classes", None)
    tl = check_cond(_Labels(k), train_labels, len(train_labels), "training labels (--train-labels)")
    k = check_n_classes(int(k if k is not None else tl.max() + 1), "training labels")
    hl = None
    if holdout_labels is not None:
        hl = check_cond(_Labels(k), holdout_labels, len(holdout_labels), "holdout labels (--holdout-labels)")
    if sample_labels is not None:
        gl = check_cond(_Labels(k), sample_labels, len(sample_labels), "sample labels (--sample-labels)")
        if len(gl) != int(n_gen):
            raise DiffauditError(
                f"sample labels (--sample-labels): {len(gl)} labels for {int(n_gen)} generated samples; pass "
                f"--n-samples {len(gl)} or a file with one label per sample."
            )
        source = "file"
    else:
        gl = np.arange(int(n_gen), dtype=np.int64) % k
        source = "balanced"
    class_names = class_names if class_names is not None else getattr(model, "class_names", None)
    names = list(class_names) if class_names is not None else None
    if names is None or len(names) != k:
        names = [str(c) for c in range(k)]
    return Conditions("labels", list(range(k)), names, gl, tl, hl, source)


def prompt_conditions(model, n_gen: int, prompt_set, train_labels=None) -> Conditions:
    """The conditions of a text-to-image audit: the DISTINCT prompts of ``prompt_set`` (first-seen order), generated
    balanced (sample i gets prompt i mod K); ``train_labels``: each training row's prompt index (-1: none);
    ``memorized``: a prompt's label from the file (True if any of its lines says so, None if none says)."""
    distinct = list(dict.fromkeys(prompt_set.prompts))
    if int(n_gen) < len(distinct):
        raise DiffauditError(
            f"--n-samples {int(n_gen)} is fewer than the {len(distinct)} distinct prompts of {prompt_set.path}; "
            f"pass --n-samples {len(distinct)} or more (a multiple of it samples every prompt equally)."
        )
    memorized = []
    for p in distinct:
        known = [
            m
            for q, m in zip(prompt_set.prompts, prompt_set.memorized, strict=True)
            if q == p and m is not None
        ]
        memorized.append(any(known) if known else None)
    gen = np.arange(int(n_gen), dtype=np.int64) % len(distinct)
    tl = None if train_labels is None else np.asarray(train_labels, dtype=np.int64)
    names = [p if len(p) <= 80 else p[:77] + "..." for p in distinct]
    return Conditions(
        "prompts",
        distinct,
        names,
        gen,
        tl,
        None,
        "balanced",
        memorized if any(m is not None for m in memorized) else None,
    )


class _Labels:
    """A stand-in model for ``check_cond`` on label files (the model's classes, no model needed)."""

    conditioning = "labels"
    name = "audit"

    def __init__(self, n_classes):
        self.n_classes = n_classes


def split_labels(labels, n: int, fraction: float, seed: int):
    """The labels of ``split_holdout``'s (train, holdout) rows: the same seeded permutation."""
    keep, held = holdout_indices(n, fraction, seed)
    labels = np.asarray(labels)
    return labels[keep], labels[held]


# --------------------------------------------------------------------------------------------- per condition


def slice_copies(c, rows: np.ndarray):
    """The overall copy search's decisions for generated ``rows`` (what ``factors`` and the report read)."""
    is_copy = np.asarray(c.is_copy)[rows]
    nn = np.asarray(c.nn_index)[rows]
    return replace(
        c,
        nn_index=nn,
        d1=np.asarray(c.d1)[rows],
        d2=np.asarray(c.d2)[rows],
        ratio=np.asarray(c.ratio)[rows],
        is_copy=is_copy,
        is_copy_ratio=np.asarray(c.is_copy_ratio)[rows],
        is_copy_holdout=None if c.is_copy_holdout is None else np.asarray(c.is_copy_holdout)[rows],
        is_copy_carlini=None if c.is_copy_carlini is None else np.asarray(c.is_copy_carlini)[rows],
        carlini_score=None if c.carlini_score is None else np.asarray(c.carlini_score)[rows],
        n_generated=int(len(rows)),
        n_copies=int(is_copy.sum()),
        copy_rate=float(is_copy.mean()) if len(rows) else float("nan"),
        copy_rate_ci=wilson_interval(int(is_copy.sum()), int(len(rows))),
        unique_train_copied=int(len(np.unique(nn[is_copy]))),
        transform=None if c.transform is None else np.asarray(c.transform)[rows],
    )


def copies_of_condition(sub, c) -> None:
    """Copy metrics of one condition's rows from the overall copy search ``c``."""
    sub.put("memorization.copy_rate", c.copy_rate, c.copy_rate_ci)
    sub.put("memorization.unique_train_copied", c.unique_train_copied)
    sub.put("memorization.n_copies", c.n_copies)
    for rule, flags in (("ratio", c.is_copy_ratio), ("holdout", c.is_copy_holdout)):
        if flags is not None and len(flags):
            sub.put(f"memorization.copy_rate_{rule}", float(np.mean(flags)))
    sub.art["copies"] = c


def copies_significant(k: int, n: int, max_rate: float, n_conditions: int) -> tuple[bool, float]:
    """(k copies in n samples are significantly above ``max_rate`` for one of ``n_conditions``, the p-value):
    the exact one-sided binomial test P(X >= k | n, max_rate) <= 0.05 / K (Bonferroni). Exact, because a Wilson
    bound is far too optimistic at a few samples per condition (1 copy in 1 sample had a bound of 0.18 > 0.02:
    a copy-free model failed 42 % of audits at 10 classes x 5 samples)."""
    if n <= 0 or k <= 0:
        return False, 1.0
    p = float(binom.sf(int(k) - 1, int(n), float(max_rate)))
    return p <= FAMILY_ALPHA / max(1, int(n_conditions)), p


def memorization_verdict(
    probes: dict, cfg, n_conditions: int, n_generated: int | None = None
) -> tuple[str, str]:
    """The per-condition memorization rule of the module docstring: (verdict, reason). ``n_generated``: the
    condition's samples (else read off its copy rate and copy count)."""
    mem = probes.get("memorization") or {}
    cr, nc = mem.get("copy_rate"), mem.get("n_copies")
    if cr is None:
        return "n/a", "no generated samples of this condition."
    k = int(round((nc or {}).get("value", 0)))
    n = (
        int(n_generated)
        if n_generated is not None
        else (int(round(k / cr["value"])) if cr["value"] > 0 else 0)
    )
    level = 1 - FAMILY_ALPHA / max(1, n_conditions)
    sig, p = copies_significant(k, n, cfg.max_copy_rate, n_conditions)
    if sig:
        return "fail", (
            f"copy rate {cr['value']:.3f} ({k} of {n}): above {cfg.max_copy_rate:g} with confidence {level:.4f} "
            f"(exact binomial p = {p:.2g})."
        )
    auc = mem.get("mia_auc")
    if auc and auc.get(
        "ci"
    ):  # the same one-sided level for the AUC: its 95 % interval gives the standard error
        se = (auc["ci"][1] - auc["ci"][0]) / (2 * z_value(0.95))
        auc_lo = auc["value"] - z_value(1.0 - 2.0 * FAMILY_ALPHA / max(1, n_conditions)) * se
        if auc_lo > cfg.max_mia_auc:
            return "fail", (
                f"membership AUC {auc['value']:.3f}: above {cfg.max_mia_auc:g} with confidence {level:.4f} "
                f"(lower bound {auc_lo:.3f})."
            )
    return "pass", (
        f"copy rate {cr['value']:.3f} ({k} of {n}) is not significantly above {cfg.max_copy_rate:g} at confidence "
        f"{level:.4f} (exact binomial p = {p:.2g})."
    )


# held-out rows of a condition needed to set its own 1 % quantile (else: the overall one)
MIN_CLASS_CALIBRATION = 100


def recalibrate_copies(c, d1_holdout: np.ndarray | None, quantile: float = 0.01):
    """A condition's sliced copy decisions (``slice_copies``) with the holdout rule's threshold set on that
    condition's OWN held-out rows (``d1_holdout``: their distances to the nearest training item, as the overall
    calibration measured them): the 1 % quantile over all classes flags the fresh samples of a densely trained
    class more often than 1 % (long-tailed training 2000/100/100 with a balanced holdout: 2.5 %, and a copy-free
    model failed that class in 20-60 % of audits). Unchanged without a holdout rule or with fewer than
    ``MIN_CLASS_CALIBRATION`` rows. Returns (copies, the threshold used or None)."""
    if c.is_copy_holdout is None or d1_holdout is None or len(d1_holdout) < MIN_CLASS_CALIBRATION:
        return c, None
    thr = float(np.quantile(d1_holdout, quantile))
    is_hold = np.asarray(c.d1) < thr
    is_copy = is_hold & np.asarray(c.is_copy_ratio) if c.rule == "ratio_and_holdout" else c.is_copy
    if c.rule == "holdout":
        is_copy = is_hold
    k, n = int(np.sum(is_copy)), int(len(is_copy))
    nn = np.asarray(c.nn_index)
    return (
        replace(
            c,
            is_copy=is_copy,
            is_copy_holdout=is_hold,
            n_copies=k,
            copy_rate=k / n if n else float("nan"),
            copy_rate_ci=wilson_interval(k, n),
            unique_train_copied=int(len(np.unique(nn[is_copy]))),
            holdout_threshold=thr,
        ),
        thr,
    )
