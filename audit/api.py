"""The Python API: audit a model from a notebook or a training loop with one call.

    import diffaudit
    report = diffaudit.audit("control:gaussian", dataset="hidden-manifold:d=16", n_train=2000, n_samples=500)
    report.verdict["convergence"], report.value("convergence.moment_error")

``audit`` takes the same inputs as ``diffaudit audit`` and returns the report: a dict with the keys of
``report.json`` (``probes``, ``verdict``, ``reasons``, ...). The probes themselves are plain functions on
arrays in ``diffaudit.probes`` (e.g. ``diffaudit.probes.moment_error.whitened_moment_error``).
"""

from __future__ import annotations

from diffaudit.errors import DiffauditError
from diffaudit.fileio import check_out_dir
from diffaudit.models.adapters import as_model, load_model
from diffaudit.pipeline.config import AuditConfig
from diffaudit.pipeline.run import Report, run_audit_on
from diffaudit.pipeline.setup import audit_data, n_classes_of
from diffaudit.threads import apply_thread_policy, resolve_threads

__all__ = ["AuditConfig", "Report", "audit", "set_threads"]


def set_threads(n: int | None = None) -> int:
    """The CLI's thread policy for this Python process (``diffaudit --threads``; see ``diffaudit.threads``).

    ``n`` threads (default: ``$DIFFAUDIT_THREADS``, else the CPUs this process may use) for torch, FAISS and
    the BLAS libraries, except numpy's and scipy's own BLAS, which get one (``$DIFFAUDIT_NUMPY_BLAS_THREADS``
    to change it), and ``OMP_WAIT_POLICY=PASSIVE`` unless set. The wait policy only takes effect when
    this runs before torch or faiss is imported (OpenMP reads it once, at load): call it first in a notebook
    that shares its machine. Returns the thread count.
    """
    return apply_thread_policy(resolve_threads(n), override=n is not None)


def audit(
    model,
    *,
    dataset=None,
    n_train: int | None = None,
    n_holdout: int | None = None,
    train=None,
    holdout=None,
    out_dir=None,
    num_steps: int | None = None,
    threads: int | None = None,
    train_labels=None,
    holdout_labels=None,
    sample_labels=None,
    **options,
) -> Report:
    """Audit ``model`` and return its report (``out_dir``: also write the report folder there).

    ``model``: a spec string (``"ckpt:runs/mlp"``, ``"samples:gen.npy"``, ``"control:gaussian"``, ...), or any
    object with ``sample(n, seed)`` (and optionally ``denoise(x, sigma)``), or a ``sample(n, seed)`` function.
    Data: ``dataset`` (a synthetic dataset or its spec) with ``n_train`` draws the training and holdout sets;
    or ``train`` (and ``holdout``): arrays in the normal form or paths (``dataset`` then adds the factor
    probes). ``options``: any ``AuditConfig`` field (``n_samples``, ``seed``, ``features``, ``eps1``, ...).
    ``threads``: as ``set_threads(threads)`` first (process-wide); None leaves the process's settings alone.
    Conditional models: ``condition="labels"`` audits per class (labels from the synthetic dataset's discrete
    factor, or ``train_labels`` / ``holdout_labels`` arrays or files; ``sample_labels``: the class of each
    generated sample, default balanced); the report then has ``conditions``.
    """
    if threads is not None:
        set_threads(threads)
    cfg = AuditConfig.from_options(options, where="audit()")
    if train is None and (dataset is None or n_train is None):
        raise DiffauditError("audit(): pass dataset=... with n_train=N, or train=... (array or path).")
    data = audit_data(
        dataset,
        n_train,
        n_holdout,
        train,
        holdout,
        n_samples=cfg.n_samples,
        seed=cfg.seed,
        train_labels=train_labels,
        holdout_labels=holdout_labels,
    )
    labels = data.train_labels if cfg.condition == "labels" else None
    if isinstance(model, str):
        m = load_model(
            model,
            train=data.train,
            dataset=data.dataset,
            device=cfg.device,
            num_steps=num_steps,
            train_labels=labels,
            n_classes=None if labels is None else n_classes_of(data),
            class_names=data.class_names,
            guidance=1.0 if cfg.guidance is None else cfg.guidance,
        )
        spec = model
    else:
        m, spec = as_model(model), None
    if out_dir is not None:
        check_out_dir(out_dir)
    if sample_labels is not None and not hasattr(sample_labels, "__len__"):
        raise DiffauditError("audit(): sample_labels must be an array of one class per generated sample.")
    return run_audit_on(m, data, config=cfg, out_dir=out_dir, model_spec=spec, sample_labels=sample_labels)
