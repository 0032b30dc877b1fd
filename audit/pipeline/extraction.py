"""``diffaudit extract``'s orchestration: run Carlini et al. 2023's extraction attack on a model (the probe is
``diffaudit.probes.extraction``) and write ``extraction.json`` (+ ``gallery.png`` for images) atomically.

The data come from ``pipeline.setup.audit_data`` (the one setup path), the generations from
``pipeline.stages.sample_stream`` (the audit's own sample stream), in pixel space: the attack and its
verification compare samples, as the paper does.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.fileio import atomic_directory, atomic_write_json, jsonable
from diffaudit.pipeline.setup import AuditData
from diffaudit.pipeline.stages import sample_stream
from diffaudit.probes.extraction import ExtractionResult, coupon_collector, extract
from diffaudit.report.images import grid_png

SCHEMA = "diffaudit.extraction/1"


def check_extraction_inputs(model, data: AuditData, budget: int) -> None:
    """Refuse, before any generation, a budget < 1, a sample file with fewer rows than the budget, or a model
    whose samples do not have the training data's shape."""
    if int(budget) < 1:
        raise DiffauditError(f"--budget {budget}: the attack needs at least 1 generation.")
    n_avail = getattr(model, "n_available", None)
    if n_avail is not None and n_avail < int(budget):
        raise DiffauditError(
            f"the model {getattr(model, 'name', 'samples')} is a file of {n_avail} samples, fewer than "
            f"--budget {budget}; extraction needs a generative model, or pass --budget {n_avail} or less."
        )
    shape = tuple(getattr(model, "shape", ()) or ())
    if shape and shape != tuple(data.train.shape[1:]):
        raise DiffauditError(
            f"the model's samples have shape {shape} but the training set has shape {tuple(data.train.shape[1:])}; "
            "extract from a model of the training data's kind."
        )


def run_extraction(model, data: AuditData, budget: int, *, seed: int = 0, **kw) -> ExtractionResult:
    """The attack on ``budget`` generations of ``model``'s stream for ``seed``, verified against ``data.train``
    (``data.holdout`` calibrates it); ``kw`` go to ``probes.extraction.extract``."""
    check_extraction_inputs(model, data, budget)
    shape = tuple(data.train.shape[1:])
    if _is_image(shape):  # pixel images: candidates verified under small edits, as the copies stage does
        kw.setdefault("transforms", "default")
        kw.setdefault("image_shape", shape)
    return extract(sample_stream(model, seed), int(budget), data.train, data.holdout, seed=seed, **kw)


def _is_image(shape: tuple[int, ...]) -> bool:
    return len(shape) == 3 and shape[0] in (1, 3)


def extraction_summary(
    r: ExtractionResult, *, model_spec: str, seed: int, data: AuditData, seconds: float
) -> dict:
    """The content of ``extraction.json``."""
    ref_x = coupon_collector(r.n_train, r.budget, r.min_cluster)
    ref_c = coupon_collector(r.n_train, r.budget, 1)
    return jsonable(
        {
            "schema": SCHEMA,
            "model": model_spec,
            "seed": int(seed),
            "budget": r.budget,
            "n_train": r.n_train,
            "unique_train_extracted": r.unique_train_extracted,
            "extraction_yield": r.extraction_yield,
            "cost_per_item": r.cost_per_item,  # generations per extracted item; null when nothing was extracted
            "unique_train_copied": r.unique_train_copied,
            "n_copies": r.n_copies,
            "memorizer_reference": {
                "what": "mean and sd if the model drew its n_train training items uniformly (coupon collector)",
                "unique_train_extracted": [ref_x[0], float(np.sqrt(ref_x[1]))],
                "unique_train_copied": [ref_c[0], float(np.sqrt(ref_c[1]))],
            },
            "yield_curve": [
                {"budget": b, "extracted": e, "copied": c}
                for b, e, c in zip(r.curve_budgets, r.curve_extracted, r.curve_copied, strict=True)
            ],
            "extracted": [
                {"train_index": i, "generations": a, "transform": t}
                for i, a, t in zip(r.extracted_index, r.extracted_at, r.extracted_transform, strict=True)
            ],
            "gallery": [
                {"train_index": t, "generation": g, "distance": d, "cluster_size": k, "transform": e}
                for t, g, d, k, e in zip(
                    r.gallery_train_index,
                    r.gallery_generation,
                    r.gallery_distance,
                    r.gallery_cluster_size,
                    r.gallery_transform,
                    strict=True,
                )
            ],
            "gallery_png": "gallery.png" if _is_image(r.sample_shape) and len(r.gallery_samples) else None,
            "calibration": {
                "rule": r.rule,
                "transforms": list(r.transforms),
                "copy_threshold": r.copy_threshold,
                "transform_threshold": r.transform_threshold,
                "link_radius": r.link_radius,
                "min_cluster": r.min_cluster,
                "n_holdout": None if data.holdout is None else len(data.holdout),
                "expected_chance_links": r.expected_chance_links,
                "expected_false_extractions": r.expected_false_extractions,
            },
            "linking": {
                "n_clusters": r.n_clusters,
                "n_candidates": r.n_candidates,
                "n_candidates_verified": r.n_candidates_verified,
                "n_candidates_unverified": r.n_candidates_unverified,
                "store_capacity": r.store_capacity,
                "n_evicted_open": r.n_evicted_open,
                "exact": r.exact_linking,
                "chunk_size": r.chunk_size,
            },
            "data": data.provenance,
            "seconds": round(float(seconds), 3),
        }
    )


def write_extraction(out_dir: Path, summary: dict, r: ExtractionResult, train: np.ndarray) -> Path:
    """``out_dir/extraction.json`` and, for images, ``gallery.png`` (each candidate beside its training match,
    four pairs a row); the folder appears complete or not at all."""
    with atomic_directory(out_dir) as tmp:
        if summary.get("gallery_png"):
            pairs = np.empty((2 * len(r.gallery_samples), *r.sample_shape), np.float32)
            pairs[0::2] = r.gallery_samples
            pairs[1::2] = np.asarray(train, np.float32)[r.gallery_train_index].reshape(-1, *r.sample_shape)
            (tmp / "gallery.png").write_bytes(grid_png(pairs, cols=8))
        atomic_write_json(tmp / "extraction.json", summary)
    return Path(out_dir)


def extract_to_dir(
    model, data: AuditData, budget: int, out_dir: Path, *, model_spec: str, seed: int = 0, **kw
) -> tuple[dict, ExtractionResult]:
    """Run the attack and write its folder; returns (the summary written, the result)."""
    t0 = time.perf_counter()
    r = run_extraction(model, data, budget, seed=seed, **kw)
    summary = extraction_summary(
        r, model_spec=model_spec, seed=seed, data=data, seconds=time.perf_counter() - t0
    )
    write_extraction(out_dir, summary, r, data.train)
    return summary, r
