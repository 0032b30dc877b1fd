"""One way to set up an audit's data, used by the ``audit`` command, the demo and every sweep cell.

The data-seed rule lives here and nowhere else: for audit seed ``s`` the model samples with ``s``, the
synthetic training set is ``dataset.sample(n_train, 3 s + 1)`` and the holdout
``dataset.sample(n_holdout, 3 s + 2)`` (a finite dataset such as digits: ``dataset.split(n_train, n_holdout,
3 s + 1)``, disjoint parts of one permutation). For every s >= 0 the three streams differ, so the oracle control
never draws its own training set; training sets of one seed are nested across n (``sample(n, seed)`` is a
prefix of ``sample(m, seed)`` for n < m), which a data-scaling sweep relies on.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffaudit.datasets.base import get_dataset
from diffaudit.datasets.labels import label_factor, labels_from_factors
from diffaudit.datasets.loading import load_image_files, load_samples
from diffaudit.errors import DiffauditError


def data_seeds(seed: int) -> tuple[int, int]:
    """(train seed, holdout seed) of the synthetic data streams for audit seed ``seed``."""
    return 3 * int(seed) + 1, 3 * int(seed) + 2


def split_holdout(train: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``train`` into (train, holdout) with ``fraction`` of the rows held out."""
    keep, held = holdout_indices(len(train), fraction, seed)
    return train[keep], train[held]


def holdout_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept rows, held-out rows) of ``split_holdout``, each in original order (labels follow the same split)."""
    if not 0 < fraction < 1:
        raise DiffauditError(f"holdout fraction {fraction} must be between 0 and 1 (exclusive), e.g. 0.2.")
    k = int(round(n * fraction))
    if k < 2 or n - k < 2:
        raise DiffauditError(
            f"holdout fraction {fraction} of {n} training samples leaves fewer than 2 on a side; pass more data."
        )
    perm = np.random.default_rng([0x401D, int(seed)]).permutation(n)
    return np.sort(perm[k:]), np.sort(perm[:k])


@dataclass
class AuditData:
    """The data an audit runs against; ``dataset`` (and the true factors) only for synthetic data."""

    train: np.ndarray
    holdout: np.ndarray | None
    dataset: object | None = None
    train_z: np.ndarray | None = None
    holdout_z: np.ndarray | None = None
    provenance: dict | None = None
    # class labels (int64 (n,)) of the rows, for class-conditional audits: a synthetic dataset's discrete factor
    # (datasets.labels) or --train-labels / --holdout-labels files; None when there are none
    train_labels: np.ndarray | None = None
    holdout_labels: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None
    prompts: object | None = (
        None  # datasets.prompts.PromptSet of a text-to-image audit (train_labels: prompt index)
    )


def dataset_split(dataset, n_train: int, n_holdout: int, seed: int):
    """(train x, train z, holdout x, holdout z) drawn from ``dataset`` with the seeds of ``data_seeds``."""
    if int(n_train) < 2:
        raise DiffauditError(f"--n-train {n_train}: needs at least 2 training samples.")
    if int(n_holdout) < 2:
        raise DiffauditError(f"--n-holdout {n_holdout}: needs at least 2 held-out samples.")
    if int(seed) < 0:
        raise DiffauditError(f"--seed {seed}: pass a non-negative seed.")
    s_train, s_hold = data_seeds(seed)
    if (
        getattr(dataset, "n_population", None) is not None
    ):  # a finite set (digits): disjoint parts of one permutation
        (xt, zt), (xh, zh) = dataset.split(int(n_train), int(n_holdout), s_train)
        return xt, zt, xh, zh
    xt, zt = dataset.sample(int(n_train), s_train)
    xh, zh = dataset.sample(int(n_holdout), s_hold)
    return xt, zt, xh, zh


DEFAULT_N_HOLDOUT = 2000  # the holdout calibrates the copy rule and is the real side of FD/KID


def default_n_holdout(dataset, n_train: int, n_samples: int | None) -> int:
    """max(n_samples, 2000) held-out samples; for a finite dataset at most what the training set leaves."""
    n = max(int(n_samples or DEFAULT_N_HOLDOUT), DEFAULT_N_HOLDOUT)
    pop = getattr(dataset, "n_population", None)
    return n if pop is None else max(2, min(n, int(pop) - int(n_train)))


def synthetic_data(
    dataset, n_train: int, n_holdout: int | None, seed: int, n_samples: int | None = None
) -> AuditData:
    """Training and holdout sets drawn from a synthetic ``dataset`` (object or spec string); ``n_holdout`` None:
    ``default_n_holdout``."""
    ds = get_dataset(dataset) if isinstance(dataset, str) else dataset
    if n_holdout is None:
        n_holdout = default_n_holdout(ds, n_train, n_samples)
    xt, zt, xh, zh = dataset_split(ds, n_train, n_holdout, seed)
    s_train, s_hold = data_seeds(seed)
    prov = {
        "train": f"{ds.spec} n={int(n_train)} seed={s_train}",
        "holdout": f"{ds.spec} n={int(n_holdout)} seed={s_hold}",
    }
    data = AuditData(xt, xh, ds, zt, zh, prov)
    with contextlib.suppress(DiffauditError):  # a dataset without a discrete factor has no labels
        _, names = label_factor(ds)
        data.train_labels, data.holdout_labels = labels_from_factors(ds, zt), labels_from_factors(ds, zh)
        data.class_names = names
    return data


def file_data(
    train_path, holdout_path=None, dataset=None, train_labels_path=None, holdout_labels_path=None
) -> AuditData:
    """Training (and holdout) samples from files; ``dataset`` (optional) adds the factor probes; the label files
    (one int label per row, ``load_labels``) make a class-conditional audit possible."""
    ds = get_dataset(dataset) if isinstance(dataset, str) else dataset
    train = load_samples(train_path, name=f"training set {train_path}")
    holdout = load_samples(holdout_path, name=f"holdout set {holdout_path}") if holdout_path else None
    prov = {"train": str(train_path), "holdout": None if holdout_path is None else str(holdout_path)}
    data = AuditData(train, holdout, ds, None, None, prov)
    if train_labels_path is not None:
        data.train_labels = load_labels(train_labels_path, len(train), "--train-labels")
    if holdout_labels_path is not None:
        if holdout is None:
            raise DiffauditError("--holdout-labels goes with --holdout PATH; pass the held-out samples too.")
        data.holdout_labels = load_labels(holdout_labels_path, len(holdout), "--holdout-labels")
    return data


def load_labels(path, n: int | None, option: str) -> np.ndarray:
    """Class labels from a file: .npy (or a one-array .npz) of whole numbers, or text with one integer per line.
    ``n``: the number of rows they label (None: any). Anything else is one ``DiffauditError`` sentence."""
    p = Path(path)
    if not p.is_file():
        raise DiffauditError(
            f"{option} {path}: no such file; pass a .npy or text file with one label per row."
        )
    try:
        if p.suffix in (".npy", ".npz"):
            raw = np.load(p, allow_pickle=False)
            if isinstance(raw, np.lib.npyio.NpzFile):
                if len(raw.files) != 1:
                    raise ValueError(f"holds {len(raw.files)} arrays, not one")
                raw = raw[raw.files[0]]
        else:
            lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
            raw = np.array([int(ln) for ln in lines], dtype=np.int64)
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise DiffauditError(
            f"{option} {path}: cannot read class labels ({str(e)[:120]}); pass a .npy of integers or text "
            "with one integer per line."
        ) from None
    raw = np.asarray(raw).reshape(-1) if np.ndim(raw) == 2 and 1 in np.shape(raw) else np.asarray(raw)
    if raw.ndim != 1:
        raise DiffauditError(f"{option} {path}: labels must be one value per row, got shape {raw.shape}.")
    if raw.dtype.kind == "f" and np.isfinite(raw).all() and (raw == np.round(raw)).all():
        raw = raw.astype(np.int64)
    if raw.dtype.kind not in "iu":
        raise DiffauditError(f"{option} {path}: labels must be whole numbers, got dtype {raw.dtype}.")
    if n is not None and len(raw) != int(n):
        raise DiffauditError(
            f"{option} {path}: {len(raw)} labels for {int(n)} samples; pass one label per sample, in order."
        )
    if len(raw) and raw.min() < 0:
        raise DiffauditError(f"{option} {path}: label {int(raw.min())} is negative; classes are 0, 1, ...")
    return raw.astype(np.int64)


def audit_data(
    dataset=None,
    n_train: int | None = None,
    n_holdout: int | None = None,
    train=None,
    holdout=None,
    *,
    n_samples: int | None = None,
    seed: int = 0,
    train_labels=None,
    holdout_labels=None,
) -> AuditData:
    """The data of one audit: ``train`` (and ``holdout``) as paths or arrays (``dataset`` then adds the
    factor probes), or, without ``train``, ``n_train`` draws of the synthetic ``dataset`` and a holdout of
    ``n_holdout`` (default ``default_n_holdout``) with the seeds of ``data_seeds(seed)``."""
    if train is None:
        return synthetic_data(dataset, n_train, n_holdout or None, seed, n_samples)
    if isinstance(train, str | Path):
        return file_data(train, holdout, dataset, train_labels, holdout_labels)
    ds = get_dataset(dataset) if isinstance(dataset, str) else dataset
    return AuditData(
        train,
        holdout,
        ds,
        train_labels=None if train_labels is None else np.asarray(train_labels),
        holdout_labels=None if holdout_labels is None else np.asarray(holdout_labels),
    )


def prompt_data(prompt_set, train_path=None, holdout_path=None, dataset=None) -> AuditData:
    """The data of a text-to-image audit: the training images the prompts file names (each tied to its prompt:
    ``train_labels`` = the index of its prompt among the file's DISTINCT prompts, in first-seen order) followed by
    the rows of ``train_path`` (tied to no prompt: label -1); ``holdout_path``: held-out real images."""
    distinct = list(dict.fromkeys(prompt_set.prompts))
    index = {p: i for i, p in enumerate(distinct)}
    tied = [
        (f, index[p]) for p, f in zip(prompt_set.prompts, prompt_set.images, strict=True) if f is not None
    ]
    parts, labels = [], []
    if tied:
        parts.append(
            load_image_files([f for f, _ in tied], name=f"training images of prompts file {prompt_set.path}")
        )
        labels.append(np.array([i for _, i in tied], dtype=np.int64))
    if train_path is not None:
        x = load_samples(train_path, name=f"training set {train_path}")
        parts.append(x)
        labels.append(np.full(len(x), -1, np.int64))
    if not parts:
        raise DiffauditError(
            f"prompts file {prompt_set.path} names no training image and there is no --train; give each prompt an "
            "'image' in a JSONL prompts file, or pass --train PATH with the training images."
        )
    if len(parts) == 2 and parts[0].shape[1:] != parts[1].shape[1:]:
        raise DiffauditError(
            f"the prompts file's images have shape {parts[0].shape[1:]} but --train {train_path} has "
            f"{parts[1].shape[1:]}; pass images of one size."
        )
    train = np.concatenate(parts) if len(parts) > 1 else parts[0]
    holdout = load_samples(holdout_path, name=f"holdout set {holdout_path}") if holdout_path else None
    ds = get_dataset(dataset) if isinstance(dataset, str) else dataset
    prov = {
        "train": f"{len(tied)} images of {prompt_set.path}" + (f" + {train_path}" if train_path else ""),
        "holdout": None if holdout_path is None else str(holdout_path),
        "prompts": str(prompt_set.path),
    }
    data = AuditData(train, holdout, ds, None, None, prov)
    data.train_labels = np.concatenate(labels) if len(labels) > 1 else labels[0]
    data.prompts = prompt_set
    return data


MAX_CLASSES = (
    100_000  # labels are class indices 0..K-1; a larger K is a mistaken label file, not a class count
)


def check_n_classes(k: int, where: str = "class labels") -> int:
    """``k`` classes, refused in one sentence above ``MAX_CLASSES`` (a label of 10^12 would allocate per class)."""
    if int(k) > MAX_CLASSES:
        raise DiffauditError(
            f"{where}: the largest label is {int(k) - 1}, i.e. {int(k)} classes; labels must be class indices "
            f"0..K-1 with K <= {MAX_CLASSES} (renumber them)."
        )
    return int(k)


def n_classes_of(data) -> int:
    """Classes of a labelled audit: the dataset's (all of them, also those missing from a small training set),
    else the largest label seen + 1 (at most ``MAX_CLASSES``)."""
    if data.class_names is not None:
        return len(data.class_names)
    seen = [data.train_labels] + ([data.holdout_labels] if data.holdout_labels is not None else [])
    return check_n_classes(int(max(int(a.max()) for a in seen if len(a))) + 1)
