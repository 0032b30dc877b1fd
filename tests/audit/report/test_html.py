"""report.html from the metric schema, the shared plotly.js of sweeps, and the one image mosaic.

References: the schema rows themselves (every label, unit, direction, verdict and help text), plotly's own
``get_plotlyjs`` source, a brute-force pixel loop for the mosaic, and PNG decoding by PIL."""

from __future__ import annotations

import html
import io
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from plotly.offline import get_plotlyjs

from diffaudit.errors import DiffauditError
from diffaudit.probes.memorization import find_copies
from diffaudit.report import schema
from diffaudit.report.html import (
    PLOTLY_FILE,
    metric_tables,
    ordered_metrics,
    render_html,
    shared_plotly_src,
    write_shared_plotly,
)
from diffaudit.report.images import data_uri, grid_png, mosaic, to_uint8, upscale_for
from diffaudit.report.writer import build_report, write_report_dir

PLOTLY_JS = get_plotlyjs()
# A stretch of plotly.js's own source from its middle: present iff the library is inlined.
PLOTLY_PROBE = PLOTLY_JS[len(PLOTLY_JS) // 2 : len(PLOTLY_JS) // 2 + 200]


def _m(v, ci=None):
    return {"value": v, "ci": ci}


def _report(model: str = "control:gaussian", extra: dict | None = None) -> dict:
    probes = {
        "convergence": {
            "fd": _m(1.5, [1.2, 1.9]),
            "fd_train_holdout": _m(1.0, [0.8, 1.3]),
            "kid": _m(0.002),
            "fd_ratio": _m(1.5),
        },
        "factors": {"validity": _m(0.9, [0.85, 0.95]), "w1_alpha": _m(0.1), "w1_beta": _m(0.2)},
        "memorization": {"copy_rate": _m(0.0, [0.0, 0.01]), "unique_train_copied": _m(0)},
    }
    for g, grp in (extra or {}).items():
        probes.setdefault(g, {}).update(grp)
    inputs = {
        "model": model,
        "dataset": "hidden-manifold:d=8",
        "n_generated": 64,
        "n_train": 64,
        "n_holdout": 64,
        "features": {"id": "pixels"},
        "seeds": {"sample": 0},
        "versions": {"diffaudit": "0"},
    }
    return build_report(
        probes=probes,
        verdict={"convergence": "pass", "generalization": "fail"},
        reasons={"convergence": "FD within the floor", "generalization": "off the manifold"},
        thresholds={},
        timings={"sample": 0.1},
        inputs=inputs,
        skipped=[],
        details={},
    )


def _art(rng, image: bool = False) -> dict:
    shape = (1, 8, 8) if image else (8,)
    train = rng.uniform(-1, 1, (64, *shape)).astype(np.float32)
    gen = np.concatenate([train[:8], rng.uniform(-1, 1, (56, *shape)).astype(np.float32)])  # 8 exact copies
    holdout = rng.uniform(-1, 1, (64, *shape)).astype(np.float32)
    f = [a.reshape(len(a), -1) for a in (gen, train, holdout)]
    copies = find_copies(f[0], f[1], f[2], seed=0)
    return {
        "copies": copies,
        "gen": gen,
        "train": train,
        "holdout": holdout,
        "fg": f[0],
        "ft": f[1],
        "fh": f[2],
        "cfg": SimpleNamespace(n_copies_shown=4),
    }


def _rows(page: str) -> dict[str, str]:
    """{metric key: its table row} of a rendered page."""
    return {
        m.group(2): m.group(0)
        for m in re.finditer(r"<tr><td>(.*?)<code class='small'>([^<]+)</code>.*?</tr>", page)
    }


# ------------------------------------------------------------------------------------------- metric tables


def test_metric_tables_show_every_metric_with_its_schema_row():
    rep = _report(extra={"memorization": {"not_in_schema": _m(3.0)}})
    page = metric_tables(rep)
    rows = _rows(page)
    present = {f"{g}.{k}" for g, grp in rep["probes"].items() for k in grp}
    assert set(rows) == present  # every metric of report.json, nothing else
    for key, row in rows.items():
        m = schema.get(key)
        if m is None:
            assert key == "memorization.not_in_schema" and "not a row of the metric schema" in row
            continue
        assert f"title='{html.escape(m.help)}'" in row and html.escape(schema.label(key)) in row
        assert ({"lower": "↓ lower", "higher": "↑ higher"}.get(m.better, "↓") in row) == (
            m.better is not None
        )
        informs = {
            "convergence": "threshold 1",
            "generalization": "threshold 2",
            "memorization": "<td>memorization",
        }
        assert (informs.get(m.threshold, "@@") in row) == (m.threshold is not None)
        g, _, k = key.partition(".")
        v = rep["probes"][g][k]
        if v is None:
            assert "<td class='num'>—</td>" in row
        else:
            assert f"<td class='num'>{v['value']:.4g}" in row
            if v["ci"]:
                assert f"[{v['ci'][0]:.4g}, {v['ci'][1]:.4g}]" in row
    # the family row expanded to its members, labelled per factor
    assert "W1 / std of factor (alpha)" in rows["factors.w1_alpha"]
    assert "W1 / std of factor (beta)" in rows["factors.w1_beta"]
    # one table per group, in the schema's group order; rows in the schema's row order
    heads = re.findall(r"<h3>([^<]+)</h3>", page)
    assert heads == ["Convergence (threshold 1)", "Latent factors (threshold 2)", "Memorization"]
    order = [k for k in re.findall(r"<code class='small'>([^<]+)</code>", page)]
    pos = {m.key: i for i, m in enumerate(schema.METRICS)}
    ranks = [pos.get(k, pos.get(getattr(schema.get(k), "key", ""), len(pos))) for k in order]
    groups = [schema.GROUPS.index(k.partition(".")[0]) for k in order]
    assert groups == sorted(groups)
    assert all(a <= b for a, b, g1, g2 in zip(ranks, ranks[1:], groups, groups[1:], strict=False) if g1 == g2)


def test_ordered_metrics_lists_missing_rows_only_when_asked():
    old = ["convergence.fd", "factors.w1_x", "memorization.copy_rate", "extra.thing"]
    got = ordered_metrics(old)
    assert [k for k, _ in got] == ["convergence.fd", "factors.w1_x", "memorization.copy_rate", "extra.thing"]
    assert got[1][1] is schema.get("factors.w1_*") and got[3][1] is None
    full = ordered_metrics(old, every_row=True)
    keys = [k for k, _ in full]
    singles = [m.key for m in schema.METRICS if not m.is_family]
    assert set(keys) == set(singles) | {"factors.w1_x", "extra.thing"} and len(keys) == len(set(keys))
    assert keys[-1] == "extra.thing"


def test_user_strings_are_escaped(tmp_path):
    rng = np.random.default_rng(0)
    rep = _report(model="<script>alert(1)</script>")
    page = render_html(rep, _art(rng), {})
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


# ------------------------------------------------------------------------------------------- plotly.js


def test_inline_page_carries_plotly_and_shared_page_only_references_it(tmp_path):
    rng = np.random.default_rng(1)
    rep, art = _report(), _art(rng)
    inline = render_html(rep, art, {})
    assert PLOTLY_PROBE in inline and "<script type='text/javascript' src=" not in inline
    shared = render_html(rep, art, {}, plotly="../../plotly.min.js")
    assert "<script type='text/javascript' src='../../plotly.min.js'></script>" in shared
    assert PLOTLY_PROBE not in shared
    assert shared.count("Plotly.newPlot") == inline.count("Plotly.newPlot") >= 2  # the same figures
    # the shared script is loaded in <head>, before any figure calls Plotly
    assert shared.index("src='../../plotly.min.js'") < shared.index("Plotly.newPlot")
    assert len(inline) - len(shared) == pytest.approx(len(PLOTLY_JS), abs=200)


@pytest.mark.parametrize(
    "bad",
    [
        "/abs/plotly.min.js",
        "https://cdn.plot.ly/plotly.min.js",
        "x.js' onload='a",
        "plotly.min.css",
        "",
        "C:/x/plotly.js",
        None,
    ],
)
def test_bad_plotly_option_is_a_user_error(bad):
    rng = np.random.default_rng(2)
    with pytest.raises(DiffauditError, match="plotly="):
        render_html(_report(), _art(rng), {}, plotly=bad)


def test_write_shared_plotly_once_and_resolve_it_from_a_cell(tmp_path):
    root = tmp_path / "sweep"
    p = write_shared_plotly(root)
    assert p == root / PLOTLY_FILE and p.read_text(encoding="utf-8") == PLOTLY_JS
    mtime = p.stat().st_mtime_ns
    assert write_shared_plotly(root) == p and p.stat().st_mtime_ns == mtime  # kept, not rewritten
    p.write_text("truncated")
    write_shared_plotly(root)
    assert p.read_text(encoding="utf-8") == PLOTLY_JS  # a wrong file is replaced
    cell = root / "cells" / "hm_d8_n64_s0"
    cell.mkdir(parents=True)
    src = shared_plotly_src(cell, root)
    assert src == "../../plotly.min.js" and (cell / src).resolve() == p.resolve()


def test_writer_passes_the_option_and_keeps_images(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "sweep"
    write_shared_plotly(root)
    sizes = {}
    for mode, image in (("inline", False), ("shared", False), ("inline", True), ("shared", True)):
        art = _art(rng, image=image)
        out = root / "cells" / f"{mode}-{image}"
        if mode == "shared":
            art["plotly"] = shared_plotly_src(out, root)
        write_report_dir(out, _report(), art)
        page = (out / "report.html").read_text(encoding="utf-8")
        sizes[mode, image] = len(page.encode())
        assert (PLOTLY_PROBE in page) == (mode == "inline")
        if mode == "shared":
            assert "src='../../plotly.min.js'" in page
        if image:  # the samples grid in the page is the samples.png of the folder
            uri = data_uri((out / "samples.png").read_bytes())
            assert uri in page
            with np.load(out / "thumbs.npz") as z:
                np.testing.assert_array_equal(z["generated"], to_uint8(art["gen"][:64]))
    for image in (False, True):
        assert sizes["inline", image] - sizes["shared", image] == pytest.approx(
            len(PLOTLY_JS.encode()), abs=300
        )


# ------------------------------------------------------------------------------------------- images


def test_to_uint8_known_values():
    x = np.array([-1.0, -0.999, 0.0, 0.5, 1.0, 3.0, -7.0], np.float32).reshape(1, 1, 1, 7)
    np.testing.assert_array_equal(to_uint8(x).ravel(), [0, 0, 128, 191, 255, 255, 0])
    assert to_uint8(np.zeros((2, 3, 4, 5))).shape == (2, 4, 5, 3)


@pytest.mark.parametrize(("n", "c", "cols", "up"), [(5, 3, 2, 3), (7, 1, 8, None), (1, 4, 4, 1)])
def test_mosaic_matches_a_pixel_loop(n, c, cols, up):
    rng = np.random.default_rng(n)
    h, w, pad, fill = 5, 4, 2, 77
    imgs = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    got = mosaic(imgs, cols=cols, upscale=up, pad=pad, fill=fill)
    u = up or upscale_for(h, w)
    assert u == (up or 64 // 5)
    k = min(cols, n)
    rows = -(-n // k)
    ref = np.full((rows * (h * u + pad) + pad, k * (w * u + pad) + pad, c), fill, np.uint8)
    for i in range(n):
        for y in range(h * u):
            for x in range(w * u):
                ref[pad + (i // k) * (h * u + pad) + y, pad + (i % k) * (w * u + pad) + x] = imgs[
                    i, y // u, x // u
                ]
    ref = ref[..., 0] if c == 1 else ref[..., :3]
    np.testing.assert_array_equal(got, ref)


def test_grid_png_decodes_to_the_mosaic():
    rng = np.random.default_rng(4)
    for c, mode in ((1, "L"), (3, "RGB")):
        x = rng.uniform(-1, 1, (6, c, 4, 4)).astype(np.float32)
        img = Image.open(io.BytesIO(grid_png(x, cols=3)))
        assert img.mode == mode
        np.testing.assert_array_equal(np.asarray(img), mosaic(to_uint8(x), cols=3))


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 4, 4, 2), np.uint8),
        np.zeros((2, 4, 4, 3), np.float32),
        np.zeros((0, 4, 4, 3), np.uint8),
        np.zeros((4, 4, 3), np.uint8),
    ],
)
def test_mosaic_refuses_what_it_cannot_tile(bad):
    with pytest.raises(DiffauditError, match="cannot be tiled"):
        mosaic(bad)


def test_app_and_report_use_the_one_mosaic():
    app_audit = Path(__file__).resolve().parents[3] / "app" / "pages" / "2_Audit.py"
    src = app_audit.read_text(encoding="utf-8")
    assert "images.mosaic(" in src and ".repeat(" not in src  # no private copy of the tiling loop
