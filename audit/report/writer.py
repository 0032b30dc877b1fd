"""Audit reports: the ``diffaudit.report/1`` schema, and the report directory an audit writes.

Directory layout (written under a temporary name, renamed when complete):

- ``report.json``: schema ``diffaudit.report/1``. Public contract (other tools read these keys):
  ``probes.convergence.{fd, fd_train_holdout, kid, precision, recall, density, coverage}``,
  ``probes.factors.{validity, novel_valid_rate}``, ``probes.memorization.{copy_rate,
  unique_train_copied}``, each ``{"value": float, "ci": [lo, hi] | null}`` or ``null`` when not
  applicable; ``verdict.{convergence, generalization, memorization}`` in "pass" | "fail" | "n/a";
  ``timings`` (seconds per stage); ``inputs`` (specs, content hashes, seeds, versions, feature space).
  Every other metric of ``diffaudit.report.schema`` is present too (same value form, null when not measured),
  ``reasons`` (one plain sentence per verdict), ``thresholds``, ``skipped`` (probe + why), ``details``.
- ``metrics.parquet``: one row per metric: ``name`` ("group.key"), ``group``, ``value``, ``ci_lo``, ``ci_hi``.
- ``copies.parquet``: one row per generated sample: ``index``, ``nn_index``, ``d1``, ``d2``, ``ratio``,
  ``is_copy``, ``is_copy_ratio``, ``is_copy_holdout``, ``transform``, for conditional audits ``condition`` (index
  into report.json's ``conditions``) and ``condition_name`` (the edit that reached d1: "identity",
  "shift(+1,+0)", "flip", "crop90(+0,+1)", ...; always "identity" without transforms), for images with a holdout
  ``is_partial_copy``, ``partial_nn_index`` and ``partial_tiles`` (the copied tiles, a row-major 0/1 string of
  the 4 x 4 tile grid; "" when no partial copy) and, with factors, ``valid``, ``residual``, ``novel_valid``.
- images (image data only): ``samples.png`` (grid of generated samples), ``train.png`` (training
  samples), ``copies/<rank>.png`` (generated sample | its nearest training item, closest first) and
  ``thumbs.npz`` (uint8 thumbnails: ``generated``, ``pairs_generated``, ``pairs_train``, indices) for the app;
  vector data: ``pca.parquet`` (2-D PCA of generated / train / holdout features with the copy flag).
- ``report.html``: one page (``diffaudit.report.html``): plotly.js inlined once, or, with
  ``art["plotly"]`` a relative path (sweep cells), loaded from one shared ``plotly.min.js``; images as
  base64 data URIs. Every user-supplied string is HTML-escaped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.fileio import atomic_directory, jsonable
from diffaudit.report import schema
from diffaudit.report.html import INLINE, render_html
from diffaudit.report.images import data_uri, grid_png, to_uint8

# Every metric's row (key, label, unit, direction, verdict, needs) lives in the schema, not here.
SCHEMA = schema.SCHEMA
VERDICTS = schema.VERDICTS


def build_report(
    *,
    probes: dict,
    verdict: dict,
    reasons: dict,
    thresholds: dict,
    timings: dict,
    inputs: dict,
    skipped: list,
    details: dict,
) -> dict:
    """Assemble the report dict; every metric of the schema is present (null when not applicable)."""
    out_probes: dict[str, dict] = {g: {} for g in schema.GROUPS}
    for m in schema.METRICS:  # every row of the schema is present, null when not measured
        if not m.is_family:
            out_probes[m.group][m.name] = None
    for g, grp in probes.items():
        out_probes.setdefault(g, {}).update(grp)
    return {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "probes": out_probes,
        "verdict": {k: verdict.get(k, "n/a") for k in VERDICTS},
        "reasons": {k: reasons.get(k, "") for k in VERDICTS},
        "thresholds": thresholds,
        "timings": dict(timings),
        "inputs": inputs,
        "skipped": skipped,
        "details": jsonable(details),
    }


def metric_rows(report: dict) -> list[dict]:
    rows = []
    for g, grp in report["probes"].items():
        for k, m in grp.items():
            if m is None:
                rows.append({"name": f"{g}.{k}", "group": g, "value": None, "ci_lo": None, "ci_hi": None})
            else:
                ci = m.get("ci") or [None, None]
                rows.append(
                    {"name": f"{g}.{k}", "group": g, "value": m["value"], "ci_lo": ci[0], "ci_hi": ci[1]}
                )
    return rows


# --------------------------------------------------------------------------------------------- writing


def write_report_dir(
    out_dir: Path, report: dict, art: dict, *, overwrite: bool = False, t_report_start: float | None = None
) -> Path:
    """Write the whole report directory atomically (see the module docstring)."""

    t0 = t_report_start or time.perf_counter()
    out_dir = Path(out_dir)
    try:
        with atomic_directory(out_dir, overwrite=overwrite) as tmp:
            _write_contents(tmp, report, art)
            report["timings"]["report"] = round(time.perf_counter() - t0, 4)
            report["timings"]["total"] = round(
                report["timings"].get("total", 0.0) + report["timings"]["report"], 4
            )
            (tmp / "report.json").write_text(
                json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8"
            )
    except FileExistsError:
        raise DiffauditError(
            f"output folder {out_dir} already exists; pass another --out or remove it."
        ) from None
    except (NotADirectoryError, PermissionError, IsADirectoryError) as e:
        raise DiffauditError(
            f"output folder {out_dir} cannot be written ({e.strerror or e}); pass a writable --out."
        ) from None
    return out_dir


def _write_contents(tmp: Path, report: dict, art: dict) -> None:
    import pandas as pd

    pd.DataFrame(metric_rows(report), columns=["name", "group", "value", "ci_lo", "ci_hi"]).to_parquet(
        tmp / "metrics.parquet", index=False
    )
    copies = art["copies"]
    n = len(copies.nn_index)
    cols = {
        "index": np.arange(n, dtype=np.int64),
        "nn_index": copies.nn_index.astype(np.int64),
        "d1": copies.d1,
        "d2": copies.d2,
        "ratio": copies.ratio,
        "is_copy": copies.is_copy.astype(bool),
        "is_copy_ratio": copies.is_copy_ratio.astype(bool),
    }
    if copies.is_copy_holdout is not None:
        cols["is_copy_holdout"] = copies.is_copy_holdout.astype(bool)
    cols["transform"] = np.full(n, "identity") if copies.transform is None else copies.transform.astype(str)
    partial = art.get("partial_copies")
    if partial is not None:
        cols["is_partial_copy"] = partial.is_partial.astype(bool)
        cols["partial_nn_index"] = partial.nn_index.astype(np.int64)
        # row-major grid x grid map of the copied tiles ("1" = copied), "" for a sample that is no partial copy
        flat = partial.tiles.reshape(n, -1)
        cols["partial_tiles"] = [
            "".join("1" if v else "0" for v in row) if p else ""
            for row, p in zip(flat, partial.is_partial, strict=True)
        ]
    cond = art.get("conditions")
    if (
        cond is not None
    ):  # conditional audits: the condition of every generated sample (index into "conditions")
        cols["condition"] = np.asarray(cond.gen, dtype=np.int64)
        cols["condition_name"] = np.asarray(cond.names, dtype=object)[cond.gen].astype(str)
    val = art.get("validity")
    if val is not None:
        cols["valid"] = val.valid.astype(bool)
        cols["residual"] = val.residual
        cols["novel_valid"] = art["novelty"].novel_valid.astype(bool)
    pd.DataFrame(cols).to_parquet(tmp / "copies.parquet", index=False)

    gen, train = art["gen"], art["train"]
    order = np.lexsort((copies.d1, copies.ratio))  # most copy-like first
    top = order[: art["cfg"].n_copies_shown]
    if cond is not None and art["cfg"].n_copies_shown > 0:  # and the most copy-like few of every condition
        per = max(1, min(4, art["cfg"].n_copies_shown))
        extra = [order[cond.gen[order] == j][:per] for j in range(len(cond))]
        top = np.concatenate([top, *extra])
        top = top[np.sort(np.unique(top, return_index=True)[1])]
    images: dict[str, str] = {}
    if gen.ndim == 4:
        png = grid_png(gen[:64])
        (tmp / "samples.png").write_bytes(png)
        images["samples"] = data_uri(png)
        png = grid_png(train[:64])
        (tmp / "train.png").write_bytes(png)
        images["train"] = data_uri(png)
        (tmp / "copies").mkdir()
        pairs = []
        for rank, i in enumerate(top):
            png = grid_png(np.stack([gen[i], train[copies.nn_index[i]]]), cols=2)
            (tmp / "copies" / f"{rank}.png").write_bytes(png)
            pairs.append((int(i), int(copies.nn_index[i]), data_uri(png)))
        images["pairs"] = pairs
        np.savez_compressed(
            tmp / "thumbs.npz",
            generated=to_uint8(gen[:64]),
            generated_index=np.arange(min(64, len(gen))),
            pairs_generated=to_uint8(gen[top]),
            pairs_train=to_uint8(train[copies.nn_index[top]]),
            pairs_generated_index=top.astype(np.int64),
            pairs_train_index=copies.nn_index[top].astype(np.int64),
        )
    else:
        pca = _pca_points(art)
        pca.to_parquet(tmp / "pca.parquet", index=False)
        art["pca"] = pca
    html_page = render_html(report, art, images, plotly=art.get("plotly", INLINE))
    (tmp / "report.html").write_text(html_page, encoding="utf-8")


def _pca_points(art: dict, n_max: int = 1000):
    import pandas as pd

    rng = np.random.default_rng(0)
    parts = [("generated", art["fg"]), ("train", art["ft"])]
    if art.get("fh") is not None:
        parts.append(("holdout", art["fh"]))
    base = art["ft"].astype(np.float64)
    mu = base.mean(0)
    _, _, vt = np.linalg.svd(
        base[rng.choice(len(base), min(len(base), 5000), replace=False)] - mu, full_matrices=False
    )
    comp = vt[:2].T if vt.shape[0] >= 2 else np.eye(base.shape[1], 2)
    rows = []
    for name, f in parts:
        idx = np.sort(rng.choice(len(f), min(len(f), n_max), replace=False))
        p = (f[idx].astype(np.float64) - mu) @ comp
        flag = art["copies"].is_copy[idx] if name == "generated" else np.zeros(len(idx), bool)
        rows.append(
            pd.DataFrame(
                {
                    "set": name,
                    "index": idx.astype(np.int64),
                    "pc1": p[:, 0],
                    "pc2": p[:, 1] if p.shape[1] > 1 else 0.0,
                    "is_copy": flag,
                }
            )
        )
    return pd.concat(rows, ignore_index=True)
