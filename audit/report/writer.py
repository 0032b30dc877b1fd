"""Audit reports: the ``diffaudit.report/1`` schema, and the report directory an audit writes.

Directory layout (written under a temporary name, renamed when complete):

- ``report.json``: schema ``diffaudit.report/1``. Public contract (other tools read these keys):
  ``probes.convergence.{fd, fd_train_holdout, kid, precision, recall, density, coverage}``,
  ``probes.factors.{validity, novel_valid_rate}``, ``probes.memorization.{copy_rate,
  unique_train_copied}``, each ``{"value": float, "ci": [lo, hi] | null}`` or ``null`` when not
  applicable; ``verdict.{convergence, generalization, memorization}`` in "pass" | "fail" | "n/a";
  ``timings`` (seconds per stage); ``inputs`` (specs, content hashes, seeds, versions, feature space).
  Extra keys: more metrics under ``probes.<group>`` (same value form; see ``EXTRA_KEYS``),
  ``reasons`` (one plain sentence per verdict), ``thresholds``, ``skipped`` (probe + why), ``details``.
- ``metrics.parquet``: one row per metric: ``name`` ("group.key"), ``group``, ``value``, ``ci_lo``, ``ci_hi``.
- ``copies.parquet``: one row per generated sample: ``index``, ``nn_index``, ``d1``, ``d2``, ``ratio``,
  ``is_copy``, ``is_copy_ratio``, ``is_copy_holdout`` and, with factors, ``valid``, ``residual``, ``novel_valid``.
- images (image data only): ``samples.png`` (grid of generated samples), ``train.png`` (training
  samples), ``copies/<rank>.png`` (generated sample | its nearest training item, closest first) and
  ``thumbs.npz`` (uint8 thumbnails: ``generated``, ``pairs_generated``, ``pairs_train``, indices) for the app;
  vector data: ``pca.parquet`` (2-D PCA of generated / train / holdout features with the copy flag).
- ``report.html``: one self-contained page (plotly.js inlined once, images as base64 data URIs).
  Every user-supplied string is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import time
from pathlib import Path

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.fileio import atomic_directory, jsonable

SCHEMA = "diffaudit.report/1"

PUBLIC_KEYS: dict[str, tuple[str, ...]] = {
    "convergence": ("fd", "fd_train_holdout", "kid", "precision", "recall", "density", "coverage"),
    "factors": ("validity", "novel_valid_rate"),
    "memorization": ("copy_rate", "unique_train_copied"),
}
# Metrics an audit may add next to the public ones (gates may use them too; null when not measured).
EXTRA_KEYS: dict[str, tuple[str, ...]] = {
    "convergence": ("fd_gen_train", "fd_equal_n"),
    "factors": ("residual_median", "novel_rate_among_valid", "factor_coverage"),
    "memorization": ("n_copies", "copy_rate_ratio", "copy_rate_holdout", "copy_rate_ratio_and_holdout", "ct",
                     "auth_pct", "mia_auc", "mia_tpr_at_1pct"),
}
VERDICTS = ("convergence", "generalization", "memorization")


def gate_keys() -> list[str]:
    """Every ``group.key`` a gate may name (public and extra metrics; per-factor ``factors.w1_<name>`` too)."""
    return [f"{g}.{k}" for g in PUBLIC_KEYS for k in PUBLIC_KEYS[g] + EXTRA_KEYS[g]]


def build_report(*, probes: dict, verdict: dict, reasons: dict, thresholds: dict, timings: dict, inputs: dict,
                 skipped: list, details: dict) -> dict:
    """Assemble the report dict; every public key is present (null when not applicable)."""
    out_probes: dict[str, dict] = {}
    for g, keys in PUBLIC_KEYS.items():
        grp = dict.fromkeys(keys)
        grp.update(probes.get(g, {}))
        out_probes[g] = grp
    for g in probes:
        if g not in out_probes:
            out_probes[g] = dict(probes[g])
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
                rows.append({"name": f"{g}.{k}", "group": g, "value": m["value"], "ci_lo": ci[0], "ci_hi": ci[1]})
    return rows


def lookup(report: dict, key: str) -> float | None:
    """The value of ``group.key`` under ``probes`` (None when not measured)."""
    g, _, k = key.partition(".")
    m = report.get("probes", {}).get(g, {}).get(k)
    return None if m is None else m["value"]


# --------------------------------------------------------------------------------------------- images


def to_uint8(x: np.ndarray) -> np.ndarray:
    """(n, c, h, w) in [-1, 1] -> (n, h, w, c) uint8."""
    a = np.clip((np.asarray(x, dtype=np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return a.transpose(0, 2, 3, 1)


def grid_png(x: np.ndarray, cols: int = 8, upscale: int | None = None, pad: int = 2) -> bytes:
    """PNG bytes of a grid of images (n, c, h, w) in [-1, 1] (nearest-neighbour upscaled for small images)."""
    from PIL import Image

    imgs = to_uint8(x)
    n, h, w, c = imgs.shape
    up = upscale or max(1, 64 // max(h, w))
    cols = max(1, min(cols, n))
    rows = (n + cols - 1) // cols
    H, W = h * up, w * up
    canvas = np.full((rows * (H + pad) + pad, cols * (W + pad) + pad, c), 128, np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        tile = imgs[i].repeat(up, 0).repeat(up, 1)
        canvas[pad + r * (H + pad): pad + r * (H + pad) + H, pad + q * (W + pad): pad + q * (W + pad) + W] = tile
    mode = "L" if c == 1 else "RGB"
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas[..., :3], mode=mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# --------------------------------------------------------------------------------------------- writing


def write_report_dir(out_dir: Path, report: dict, art: dict, *, overwrite: bool = False,
                     t_report_start: float | None = None) -> Path:
    """Write the whole report directory atomically (see the module docstring)."""


    t0 = t_report_start or time.perf_counter()
    out_dir = Path(out_dir)
    try:
        with atomic_directory(out_dir, overwrite=overwrite) as tmp:
            _write_contents(tmp, report, art)
            report["timings"]["report"] = round(time.perf_counter() - t0, 4)
            report["timings"]["total"] = round(report["timings"].get("total", 0.0) + report["timings"]["report"], 4)
            (tmp / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    except FileExistsError:
        raise DiffauditError(f"output folder {out_dir} already exists; pass another --out or remove it.") from None
    except (NotADirectoryError, PermissionError, IsADirectoryError) as e:
        raise DiffauditError(f"output folder {out_dir} cannot be written ({e.strerror or e}); pass a writable --out.") from None
    return out_dir


def _write_contents(tmp: Path, report: dict, art: dict) -> None:
    import pandas as pd

    pd.DataFrame(metric_rows(report), columns=["name", "group", "value", "ci_lo", "ci_hi"]).to_parquet(
        tmp / "metrics.parquet", index=False)
    copies = art["copies"]
    n = len(copies.nn_index)
    cols = {"index": np.arange(n, dtype=np.int64), "nn_index": copies.nn_index.astype(np.int64),
            "d1": copies.d1, "d2": copies.d2, "ratio": copies.ratio, "is_copy": copies.is_copy.astype(bool),
            "is_copy_ratio": copies.is_copy_ratio.astype(bool)}
    if copies.is_copy_holdout is not None:
        cols["is_copy_holdout"] = copies.is_copy_holdout.astype(bool)
    val = art.get("validity")
    if val is not None:
        cols["valid"] = val.valid.astype(bool)
        cols["residual"] = val.residual
        cols["novel_valid"] = art["novelty"].novel_valid.astype(bool)
    pd.DataFrame(cols).to_parquet(tmp / "copies.parquet", index=False)

    gen, train = art["gen"], art["train"]
    order = np.lexsort((copies.d1, copies.ratio))  # most copy-like first
    top = order[: art["cfg"].n_copies_shown]
    images: dict[str, str] = {}
    if gen.ndim == 4:
        png = grid_png(gen[:64])
        (tmp / "samples.png").write_bytes(png)
        images["samples"] = _data_uri(png)
        png = grid_png(train[:64])
        (tmp / "train.png").write_bytes(png)
        images["train"] = _data_uri(png)
        (tmp / "copies").mkdir()
        pairs = []
        for rank, i in enumerate(top):
            png = grid_png(np.stack([gen[i], train[copies.nn_index[i]]]), cols=2)
            (tmp / "copies" / f"{rank}.png").write_bytes(png)
            pairs.append((int(i), int(copies.nn_index[i]), _data_uri(png)))
        images["pairs"] = pairs
        np.savez_compressed(tmp / "thumbs.npz", generated=to_uint8(gen[:64]), generated_index=np.arange(min(64, len(gen))),
                            pairs_generated=to_uint8(gen[top]), pairs_train=to_uint8(train[copies.nn_index[top]]),
                            pairs_generated_index=top.astype(np.int64), pairs_train_index=copies.nn_index[top].astype(np.int64))
    else:
        pca = _pca_points(art)
        pca.to_parquet(tmp / "pca.parquet", index=False)
        art["pca"] = pca
    (tmp / "report.html").write_text(render_html(report, art, images, top), encoding="utf-8")


def _pca_points(art: dict, n_max: int = 1000):
    import pandas as pd

    rng = np.random.default_rng(0)
    parts = [("generated", art["fg"]), ("train", art["ft"])]
    if art.get("fh") is not None:
        parts.append(("holdout", art["fh"]))
    base = art["ft"].astype(np.float64)
    mu = base.mean(0)
    _, _, vt = np.linalg.svd(base[rng.choice(len(base), min(len(base), 5000), replace=False)] - mu, full_matrices=False)
    comp = vt[:2].T if vt.shape[0] >= 2 else np.eye(base.shape[1], 2)
    rows = []
    for name, f in parts:
        idx = np.sort(rng.choice(len(f), min(len(f), n_max), replace=False))
        p = (f[idx].astype(np.float64) - mu) @ comp
        flag = art["copies"].is_copy[idx] if name == "generated" else np.zeros(len(idx), bool)
        rows.append(pd.DataFrame({"set": name, "index": idx.astype(np.int64), "pc1": p[:, 0],
                                  "pc2": p[:, 1] if p.shape[1] > 1 else 0.0, "is_copy": flag}))
    return pd.concat(rows, ignore_index=True)


# --------------------------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ddd;padding:.3em .7em;text-align:left}
th{background:#f5f5f5} .num{text-align:right;font-variant-numeric:tabular-nums}
.banner{display:flex;gap:1em;flex-wrap:wrap;margin:1em 0}
.v{padding:.8em 1.2em;border-radius:6px;min-width:14em;flex:1}
.pass{background:#e3f6e5;border:1px solid #7cc48a} .fail{background:#fde7e7;border:1px solid #e08c8c}
.na{background:#f0f0f0;border:1px solid #bbb} .v b{font-size:1.1em} .small{color:#555;font-size:.9em}
.pairs{display:flex;flex-wrap:wrap;gap:.8em} .pair{text-align:center;font-size:.8em}
code{background:#f5f5f5;padding:0 .2em}
"""


def _fmt(m) -> str:
    if m is None:
        return "—"
    v = m["value"]
    s = f"{v:.4g}"
    if m.get("ci"):
        s += f" <span class='small'>[{m['ci'][0]:.4g}, {m['ci'][1]:.4g}]</span>"
    return s


def _figures(report: dict, art: dict) -> list[str]:
    """HTML snippets of the plotly figures (plotly.js NOT included; the page inlines it once)."""
    import plotly.graph_objects as go

    figs = []
    conv = report["probes"]["convergence"]
    bars = [("generated vs holdout", conv.get("fd_equal_n") or conv.get("fd")), ("train vs holdout (noise floor)", conv.get("fd_train_holdout")),
            ("generated vs train", conv.get("fd_gen_train"))]
    bars = [(n, m) for n, m in bars if m is not None]
    if bars:
        err_hi = [(m["ci"][1] - m["value"]) if m.get("ci") else 0.0 for _, m in bars]
        err_lo = [(m["value"] - m["ci"][0]) if m.get("ci") else 0.0 for _, m in bars]
        f = go.Figure(go.Bar(x=[n for n, _ in bars], y=[m["value"] for _, m in bars],
                             error_y={"type": "data", "array": err_hi, "arrayminus": err_lo}))
        f.update_layout(title="Fréchet distance (threshold 1)", yaxis_title="FD", height=360)
        figs.append(f)
    copies = art["copies"]
    f = go.Figure()
    f.add_trace(go.Histogram(x=copies.d1, name="generated → train", opacity=0.6, histnorm="probability"))
    if copies.holdout_d1 is not None:
        f.add_trace(go.Histogram(x=copies.holdout_d1, name="holdout → train", opacity=0.6, histnorm="probability"))
    if copies.holdout_threshold is not None:
        f.add_vline(x=copies.holdout_threshold, line_dash="dash", annotation_text="holdout 1 % quantile")
    f.update_layout(barmode="overlay", title="Nearest-training-item distance d1 (memorization)", xaxis_title="d1", height=360)
    figs.append(f)
    val = art.get("validity")
    if val is not None:
        f = go.Figure(go.Histogram(x=np.log10(np.maximum(val.residual, 1e-12)), name="generated"))
        f.add_vline(x=float(np.log10(max(val.tau, 1e-12))), line_dash="dash", annotation_text="tau (valid below)")
        f.update_layout(title="Oracle-projection residual (log10), threshold 2", xaxis_title="log10 residual", height=340)
        figs.append(f)
        from plotly.subplots import make_subplots

        names = list(art["dataset"].factor_names)
        zt = art["z_true"]
        zv = val.z_hat[val.valid]
        f = make_subplots(rows=1, cols=len(names), subplot_titles=names)
        for j in range(len(names)):
            f.add_trace(go.Histogram(x=zt[:, j], name="true", histnorm="probability", opacity=0.5, marker_color="#1f77b4",
                                     showlegend=j == 0), row=1, col=j + 1)
            f.add_trace(go.Histogram(x=zv[:, j], name="generated (valid)", histnorm="probability", opacity=0.5,
                                     marker_color="#d62728", showlegend=j == 0), row=1, col=j + 1)
        f.update_layout(barmode="overlay", title="Recovered factors of valid samples vs the true prior", height=320)
        figs.append(f)
    mia = report.get("details", {}).get("membership")
    if mia:
        f = go.Figure(go.Scatter(x=mia["sigmas"], y=mia["auc"], mode="lines+markers"))
        f.add_hline(y=0.5, line_dash="dot")
        f.update_layout(title="Membership-inference AUC per noise level", xaxis_type="log", xaxis_title="sigma",
                        yaxis_title="AUC", height=320)
        figs.append(f)
    pca = art.get("pca")
    if pca is not None:
        f = go.Figure()
        for name in ("train", "holdout", "generated"):
            p = pca[pca["set"] == name]
            if len(p):
                f.add_trace(go.Scattergl(x=p["pc1"], y=p["pc2"], mode="markers", name=name, marker={"size": 4, "opacity": 0.5}))
        p = pca[(pca["set"] == "generated") & pca["is_copy"]]
        if len(p):
            f.add_trace(go.Scattergl(x=p["pc1"], y=p["pc2"], mode="markers", name="copies",
                                     marker={"size": 7, "symbol": "x", "color": "black"}))
        f.update_layout(title="PCA of features (first two components of the training set)", height=420)
        figs.append(f)
    return [fig.to_html(full_html=False, include_plotlyjs=False) for fig in figs]


def render_html(report: dict, art: dict, images: dict, top) -> str:
    """The self-contained report page. Every string that came from a user is passed through html.escape."""
    from plotly.offline import get_plotlyjs

    e = html.escape
    inp = report["inputs"]
    banner = []
    for k in VERDICTS:
        v = report["verdict"][k]
        cls = {"pass": "pass", "fail": "fail"}.get(v, "na")
        label = {"convergence": "Threshold 1 · convergence", "generalization": "Threshold 2 · generalization",
                 "memorization": "Memorization"}[k]
        banner.append(f"<div class='v {cls}'><div class='small'>{e(label)}</div><b>{e(v.upper())}</b>"
                      f"<div class='small'>{e(report['reasons'].get(k, ''))}</div></div>")
    tables = []
    for g, grp in report["probes"].items():
        rows = "".join(f"<tr><td><code>{e(g)}.{e(k)}</code></td><td class='num'>{_fmt(m)}</td></tr>" for k, m in grp.items())
        tables.append(f"<h3>{e(g)}</h3><table><tr><th>metric</th><th>value [95 % interval]</th></tr>{rows}</table>")
    skipped = "".join(f"<li><code>{e(s['probe'])}</code>: {e(s['reason'])}</li>" for s in report.get("skipped", []))
    timings = "".join(f"<tr><td>{e(k)}</td><td class='num'>{v:.2f} s</td></tr>" for k, v in report["timings"].items())
    feats = inp.get("features", {})
    warn = ""
    if feats.get("random_init"):
        warn = "<p class='fail v'><b>Warning:</b> features come from a randomly initialised network (plumbing test); the numbers mean nothing.</p>"
    info_rows = [("model", inp.get("model")), ("dataset", inp.get("dataset")), ("train", inp.get("train")),
                 ("holdout", inp.get("holdout")), ("features", feats.get("id")), ("generated / train / holdout",
                 f"{inp.get('n_generated')} / {inp.get('n_train')} / {inp.get('n_holdout')}"),
                 ("seed", inp.get("seeds", {}).get("sample")), ("created", report.get("created"))]
    info = "".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in info_rows if v is not None)
    gallery = ""
    if images:
        copies = art["copies"]
        pairs = "".join(
            f"<div class='pair'><img src='{uri}' alt='pair'><br>gen #{g} · train #{t}<br>d1 {copies.d1[g]:.3g}, "
            f"ratio {copies.ratio[g]:.2f}{' · <b>copy</b>' if copies.is_copy[g] else ''}</div>"
            for g, t, uri in images["pairs"])
        gallery = (f"<h2>Samples</h2><p>Generated (first 64):</p><img src='{images['samples']}' alt='generated samples'>"
                   f"<p>Training data (first 64):</p><img src='{images['train']}' alt='training samples'>"
                   f"<h2>Closest generated samples beside their nearest training items</h2><div class='pairs'>{pairs}</div>")
    figs = "".join(f"<div>{s}</div>" for s in _figures(report, art))
    title = f"diffaudit report — {inp.get('model')}"
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{e(str(title))}</title><style>{_CSS}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
        f"<h1>{e(str(title))}</h1>{warn}<div class='banner'>{''.join(banner)}</div>"
        f"<h2>Inputs</h2><table>{info}</table>"
        f"<h2>Metrics</h2>{''.join(tables)}"
        + (f"<h2>Skipped</h2><ul>{skipped}</ul>" if skipped else "")
        + f"{gallery}<h2>Plots</h2>{figs}<h2>Timings</h2><table>{timings}</table>"
        f"<p class='small'>schema {e(report['schema'])} · diffaudit {e(str(inp.get('versions', {}).get('diffaudit', '')))}</p>"
        "</body></html>"
    )


def default_out_dir(model_spec: str, root: str | os.PathLike = "reports") -> Path:
    from diffaudit.models.adapters import model_name

    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return Path(root) / f"{stamp}-{model_name(model_spec)}"
