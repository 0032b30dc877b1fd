"""The app's data layer: find audit and sweep-cell folders under the configured roots and read them.

No Streamlit here (the benchmark and the tests call it directly); ``diffaudit.app.ui`` wraps it in
``st.cache_data`` keyed on file modification times.

- Roots: ``DIFFAUDIT_RESULTS`` (``os.pathsep``-separated folders, set by ``diffaudit app --results``),
  default ``reports``.
- A *run* is a folder holding ``report.json`` (schema ``diffaudit.report/1``): a ``diffaudit audit``
  output or a sweep cell ``SWEEP/cells/<cell-id>/``. Its id is ``"<root index>:<path relative to the
  root>"`` (posix), so an id can never name a file outside its root: ``resolve_run`` refuses absolute
  paths, ``..``, and anything whose resolved path (symlinks followed) leaves the root.
- The overview is ONE DuckDB query over every ``report.json`` (``read_text`` + JSON path extraction):
  about 0.15 s for 1,000 cells on 2 cores (``benchmarks/bench_app.py``). A file that is not valid JSON, or
  not a ``diffaudit.report/1`` document, becomes a ``Problem`` (shown as a warning) instead of a row.
- Per-run artifacts (``metrics.parquet``, ``copies.parquet``, ``pca.parquet``) are read by DuckDB too;
  ``thumbs.npz`` with ``numpy.load(allow_pickle=False)``.
- Conditional audits (``--condition labels|prompts``): ``report.json`` adds ``inputs.condition`` and one entry per
  condition under ``conditions`` (``condition_frame``: one row each), ``copies.parquet`` a ``condition`` column
  (the entry's index; ``copies_page`` / ``most_copied`` filter on it). The overview adds the kind, the number of
  conditions and how many fail memorization; unconditional and older reports have none of these (NA).
  ``condition_comparison`` lines up several such reports' conditions by name (the Compare page).
- ``report_warnings``: the audit's own ``warnings`` (report.json's list of sentences), shown on the Audit page.
- Which metrics exist, their labels, units, better direction and groups: ``diffaudit.report.schema``, read
  here and by the pages; the app keeps no list of its own. A report written before a metric existed shows
  it as missing ("—"); ``fd_ratio`` is the one metric the app derives for such reports (same definition).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from diffaudit.errors import DiffauditError
from diffaudit.report import schema
from diffaudit.report.html import CONDITION_COLUMNS, ordered_metrics

SCHEMA = schema.SCHEMA
ENV_RESULTS = "DIFFAUDIT_RESULTS"
DEFAULT_ROOT = "reports"
REPORT = "report.json"
# Files that make a folder look like a run (a folder with some of them but no report.json is partial).
RUN_FILES = (REPORT, "metrics.parquet", "copies.parquet", "report.html")
# Artifact files the app may open inside a run folder (nothing else is ever read).
ARTIFACTS = (
    "report.json",
    "metrics.parquet",
    "copies.parquet",
    "pca.parquet",
    "thumbs.npz",
    "samples.png",
    "train.png",
    "report.html",
    "cell.json",
)
MAX_DEPTH = 6  # how deep below a root runs are looked for (root/sweep/cells/<id> is depth 3)
VERDICTS = schema.VERDICTS
# Every single-valued metric of the schema as (group, name), in schema order: the overview's value columns.
# Families (``factors.w1_*``: one per factor of a dataset) are shown per run from metrics.parquet instead.
METRICS: tuple[tuple[str, str], ...] = tuple((m.group, m.name) for m in schema.METRICS if not m.is_family)
PUBLIC_METRICS = tuple(m.key for m in schema.METRICS if m.public)
FD_RATIO = "convergence.fd_ratio"


class UnsafePathError(DiffauditError):
    """A run id or file name that would leave the configured results roots."""


@dataclass(frozen=True)
class Problem:
    """A folder that looks like a run but cannot be shown (it is skipped with this warning)."""

    path: str
    reason: str


# ---------------------------------------------------------------------------------------------- roots


def parse_roots(value: str | None) -> list[Path]:
    """``"a:b"`` (``os.pathsep``) -> [Path("a"), Path("b")]; empty/None -> [Path("reports")]."""
    parts = [p for p in (value or "").split(os.pathsep) if p.strip()]
    return [Path(p).expanduser() for p in parts] or [Path(DEFAULT_ROOT)]


def configured_roots() -> list[Path]:
    return parse_roots(os.environ.get(ENV_RESULTS))


# ---------------------------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class Scan:
    """What is under the roots: report files (with their stat, for cache keys) and problems."""

    reports: tuple[
        tuple[int, str, str, int, int], ...
    ]  # (root index, rel dir, abs report path, mtime_ns, size)
    problems: tuple[Problem, ...]
    missing_roots: tuple[str, ...]

    @property
    def fingerprint(self) -> tuple:
        return tuple((r[2], r[3], r[4]) for r in self.reports)


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):
        return False


def scan(roots: list[Path]) -> Scan:
    """Walk each root (no symlinked folders, at most ``MAX_DEPTH`` deep, hidden/temp folders skipped)."""
    reports: list[tuple[int, str, str, int, int]] = []
    problems: list[Problem] = []
    missing: list[str] = []
    for i, root in enumerate(roots):
        if not root.is_dir():
            missing.append(str(root))
            continue
        rroot = root.resolve()
        stack: list[tuple[Path, int]] = [(root, 0)]
        while stack:
            folder, depth = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError as e:
                problems.append(Problem(str(folder), f"cannot be listed ({e.strerror or e})"))
                continue
            names = {e.name: e for e in entries}
            rel = folder.relative_to(root).as_posix()
            if REPORT in names:
                e = names[REPORT]
                rp = rroot / rel / REPORT if rel != "." else rroot / REPORT
                # folders are never entered through symlinks, so only a symlinked file can leave the root
                if e.is_symlink() and not _inside(rp, rroot):
                    problems.append(
                        Problem(str(folder), "report.json points outside the results root; refused")
                    )
                    continue
                try:
                    st = rp.stat()
                except OSError as ex:
                    problems.append(Problem(str(folder), f"report.json cannot be read ({ex.strerror or ex})"))
                    continue
                reports.append((i, "" if rel == "." else rel, str(rp), st.st_mtime_ns, st.st_size))
                continue  # a run folder holds no nested runs
            if depth > 0 and any(n in names for n in RUN_FILES[1:]):
                problems.append(
                    Problem(
                        str(folder), "incomplete run folder: no report.json (interrupted or partial copy)"
                    )
                )
                continue
            if depth >= MAX_DEPTH:
                continue
            for e in entries:
                if e.name.startswith(".") or e.name.startswith("__"):
                    continue  # temp folders of atomic writes, caches
                if e.name in ("checkpoint", "checkpoint_b", "copies"):
                    continue
                try:
                    if e.is_dir(follow_symlinks=False):
                        stack.append((Path(e.path), depth + 1))
                except OSError:
                    continue
    reports.sort(key=lambda r: (r[0], r[1]))
    return Scan(tuple(reports), tuple(problems), tuple(missing))


# ---------------------------------------------------------------------------------------------- overview

_VALUE_COLUMNS = [(f"{g}.{k}", f"$.probes.{g}.{k}") for g, k in METRICS]
_STR_PATHS = {
    "schema": "$.schema",
    "created": "$.created",
    "model": "$.inputs.model",
    "dataset_spec": "$.inputs.dataset",
    "features": "$.inputs.features.id",
    "v_convergence": "$.verdict.convergence",
    "v_generalization": "$.verdict.generalization",
    "v_memorization": "$.verdict.memorization",
    "cell_dataset": "$.sweep.cell.dataset",
    "cell_dataset_spec": "$.sweep.cell.dataset_spec",
    "model_label": "$.sweep.cell.model_label",
    "cell_model": "$.sweep.cell.model",
    "cell_id": "$.sweep.cell_id",
    "cond_kind": "$.inputs.condition.kind",
}
_NUM_PATHS = {
    "cell_d": "$.sweep.cell.d",
    "cell_n_train": "$.sweep.cell.n_train",
    "cell_seed": "$.sweep.cell.seed",
    "n_train_in": "$.inputs.n_train",
    "n_generated": "$.inputs.n_generated",
    "seed_in": "$.inputs.seeds.sample",
    "steps": "$.sweep.train.steps",
    "total_s": "$.timings.total",
    "n_conditions_in": "$.inputs.condition.n_conditions",
}


def _overview_paths() -> list[tuple[str, str]]:
    """(column, JSON path) of every overview column; all extracted by ONE json_extract_string per file."""
    cols = list(_STR_PATHS.items()) + list(_NUM_PATHS.items()) + [("sample_shape", "$.inputs.sample_shape")]
    for name, p in _VALUE_COLUMNS:
        cols += [(name, f"{p}.value"), (f"{name}.lo", f"{p}.ci[0]"), (f"{name}.hi", f"{p}.ci[1]")]
    return cols


# One json_extract_string with a LIST of paths parses each document once; TRY turns a file that is not
# valid JSON into NULL (reported as a problem) instead of failing the whole query. The list is expanded
# into columns in pandas: l[1], l[2], ... in SQL costs more than the extraction itself.
# A conditional audit's per-condition memorization verdicts need a wildcard path, which DuckDB does not allow in
# a list of paths: a second extraction, only for files that mention "conditions" at all (a substring test costs
# far less than parsing), so an unconditional tree is parsed once per file, as before.
_OVERVIEW_SQL = (
    "SELECT filename, TRY(json_extract_string(content, ?)) AS l, "
    "CASE WHEN contains(content, '\"conditions\"') "
    "THEN TRY(json_extract_string(content, '$.conditions[*].verdict.memorization')) END AS cm "
    "FROM read_text(?)"
)


def connect():
    """A DuckDB in-memory connection (the app keeps one per process: ``st.cache_resource``)."""
    import duckdb

    return duckdb.connect(database=":memory:")


def load_overview(scan_result: Scan, roots: list[Path], con=None):
    """One row per valid run: ids, dataset/model/n/d/seed, verdicts, metric values with intervals.

    Returns ``(DataFrame, [Problem, ...])``; invalid report files are problems, not rows.
    """
    import pandas as pd

    problems = list(scan_result.problems)
    cols = [
        "run_id",
        "root",
        "rel",
        "path",
        "kind",
        "sweep",
        "cell_id",
        "created",
        "model",
        "model_label",
        "dataset",
        "dataset_spec",
        "d",
        "n_train",
        "seed",
        "n_generated",
        "features",
        "steps",
        "total_s",
        *(f"v_{v}" for v in VERDICTS),
        "cond_kind",
        "n_conditions",
        "n_conditions_failing",
    ]
    for name, _ in _VALUE_COLUMNS:
        cols += [name, f"{name}.lo", f"{name}.hi"]
    if not scan_result.reports:
        return pd.DataFrame(columns=cols), problems
    own = con is None
    con = con or connect()
    try:
        files = [r[2] for r in scan_result.reports]
        paths = _overview_paths()
        raw = con.cursor().execute(_OVERVIEW_SQL, [[p for _, p in paths], files]).df()
        ok = [isinstance(v, list | tuple) or hasattr(v, "__array__") for v in raw["l"]]
        blank = [None] * len(paths)
        df = pd.DataFrame(
            [list(v) if k else blank for v, k in zip(raw["l"], ok, strict=True)],
            columns=[c for c, _ in paths],
        )
        df.insert(0, "ok", ok)
        df.insert(0, "filename", raw["filename"].to_numpy())
        df["cond_mem"] = raw["cm"].to_numpy()
        num = [*_NUM_PATHS, *(c for c, _ in paths[len(_STR_PATHS) + len(_NUM_PATHS) + 1 :])]
        df[num] = df[num].apply(pd.to_numeric, errors="coerce")
    finally:
        if own:
            con.close()
    meta = pd.DataFrame(
        {
            "filename": files,
            "root_i": [r[0] for r in scan_result.reports],
            "rel": [r[1] for r in scan_result.reports],
        }
    )
    df = meta.merge(df, on="filename", how="left")
    bad_json = df["ok"].isna() | ~df["ok"].fillna(False).astype(bool)
    for f in df.loc[bad_json, "filename"]:
        problems.append(
            Problem(str(Path(f).parent), "report.json is not valid JSON (truncated or corrupt); skipped")
        )
    df = df[~bad_json]
    bad_schema = (df["schema"] != SCHEMA) | df["v_convergence"].isna()
    for _, r in df[bad_schema].iterrows():
        problems.append(
            Problem(
                str(Path(r["filename"]).parent),
                f"report.json is not a {SCHEMA} report (schema {r['schema']!r}, or no verdict); skipped",
            )
        )
    df = df[~bad_schema].copy()
    out: dict = {}
    out["run_id"] = [f"{i}:{rel}" for i, rel in zip(df["root_i"], df["rel"], strict=True)]
    out["root"] = [str(roots[i]) for i in df["root_i"]]
    out["rel"] = df["rel"]
    out["path"] = [str(Path(f).parent) for f in df["filename"]]
    is_cell = df["cell_id"].notna()
    out["kind"] = ["sweep cell" if c else "audit" for c in is_cell]
    out["sweep"] = [_sweep_of(rel) if c else None for rel, c in zip(df["rel"], is_cell, strict=True)]
    out["cell_id"] = df["cell_id"].map(_cut)
    out["created"] = df["created"].map(_cut)
    out["model"] = df["cell_model"].fillna(df["model"]).map(_cut)
    out["model_label"] = df["model_label"].fillna(df["model"]).map(_cut)
    out["dataset_spec"] = df["cell_dataset_spec"].fillna(df["dataset_spec"]).map(_cut)
    out["dataset"] = (
        df["cell_dataset"]
        .fillna(df["dataset_spec"].map(lambda s: s.split(":", 1)[0] if isinstance(s, str) else None))
        .map(_cut)
    )
    vec_d = df["sample_shape"].map(_vector_dim)
    out["d"] = df["cell_d"].fillna(vec_d).astype("Int64")
    out["n_train"] = df["cell_n_train"].fillna(df["n_train_in"]).astype("Int64")
    out["seed"] = df["cell_seed"].fillna(df["seed_in"]).astype("Int64")
    out["n_generated"] = df["n_generated"].astype("Int64")
    out["features"] = df["features"].map(_cut)
    out["steps"] = df["steps"].astype("Int64")
    out["total_s"] = df["total_s"]
    for v in VERDICTS:
        out[f"v_{v}"] = df[f"v_{v}"].fillna("n/a")
    out.update(_conditioning(df["cond_kind"], df["n_conditions_in"], df["cond_mem"]))
    for name, _ in _VALUE_COLUMNS:
        for c in (name, f"{name}.lo", f"{name}.hi"):
            out[c] = df[c]
    out[FD_RATIO] = fd_ratio(
        df[FD_RATIO], df["convergence.fd_equal_n"], df["convergence.fd"], df["convergence.fd_train_holdout"]
    )
    return pd.DataFrame(out, index=df.index)[cols].reset_index(drop=True), problems


def _conditioning(kind, n_in, mem) -> dict:
    """The overview's conditioning columns: ``cond_kind`` ("labels" | "prompts"; None for an unconditional run),
    ``n_conditions`` (the report's ``inputs.condition.n_conditions``, else its number of ``conditions``) and
    ``n_conditions_failing`` (conditions whose memorization verdict is "fail"; <NA> for an unconditional run).

    ``kind``, ``n_in``: aligned Series from the one JSON extraction; ``mem``: each run's list of per-condition
    memorization verdicts (None when the report has no ``conditions``)."""
    import pandas as pd

    lists = [list(v) if isinstance(v, list | tuple) or hasattr(v, "__array__") else None for v in mem]
    n_listed = pd.Series([len(v) if v else None for v in lists], index=kind.index, dtype="Float64")
    n_fail = pd.Series(
        [sum(x == "fail" for x in v) if v else None for v in lists], index=kind.index, dtype="Float64"
    )
    n = pd.to_numeric(n_in, errors="coerce").astype("Float64")
    n = n.where(n >= 1).fillna(n_listed)
    is_cond = kind.notna() | n.notna()
    out_kind = kind.map(_cut).astype(object)
    out_kind[is_cond & kind.isna()] = "conditional"  # a list of conditions without inputs.condition
    return {
        "cond_kind": out_kind.where(is_cond, None),
        "n_conditions": n.round().astype("Int64"),
        "n_conditions_failing": n_fail.where(is_cond).round().astype("Int64"),
    }


# Longest text kept in the overview (model names, dataset specs, ...): a report may hold a 50 MB string, and
# every page draws these columns; longer ones are cut (ending in "…"), which keeps them distinct in practice.
TEXT_LIMIT = 500


def _cut(v):
    return v[: TEXT_LIMIT - 1] + "…" if isinstance(v, str) and len(v) > TEXT_LIMIT else v


def sweep_label(sweep: str | None, root: str) -> str:
    """How a sweep is named in the app: its folder relative to the results root, the root's own name when the
    root is the sweep folder (``"."``), or a note for cells found outside any ``SWEEP/cells/`` folder."""
    if sweep is None or (isinstance(sweep, float) and sweep != sweep):
        return f"cells outside a sweep folder  (in {root})"
    name = Path(root).name if sweep in ("", ".") else sweep
    return f"{name}  (in {root})"


def fd_ratio(reported, fd_equal_n, fd, floor):
    """``convergence.fd_ratio`` (FD / its real-vs-real floor; lower is better): the reported value, else,
    for reports written before the metric existed, the same ratio from the report's own FDs.

    Arguments are aligned pandas Series (NaN = not in the report). The metric divides the FD at equal n
    (``fd_equal_n``) by the floor measured at that n; older reports without ``fd_equal_n`` use ``fd``. A
    floor of 0 gives no ratio (NaN), as in the audit. This is the app's only derived metric.
    """
    import pandas as pd

    num = pd.to_numeric(fd_equal_n, errors="coerce").fillna(pd.to_numeric(fd, errors="coerce"))
    den = pd.to_numeric(floor, errors="coerce")
    derived = (num / den).where(den > 0)
    return pd.to_numeric(reported, errors="coerce").fillna(derived)


def _vector_dim(shape: str | None) -> float | None:
    """``"[8]"`` -> 8.0 (vector data has a 1-D sample shape); images and unknown -> None."""
    try:
        v = json.loads(shape) if isinstance(shape, str) else None
    except json.JSONDecodeError:
        return None
    return float(v[0]) if isinstance(v, list) and len(v) == 1 and isinstance(v[0], int | float) else None


def _sweep_of(rel: str) -> str | None:
    """``"a/sweep1/cells/<id>"`` -> ``"a/sweep1"`` (the sweep folder, relative to its root)."""
    p = PurePosixPath(rel)
    if len(p.parts) >= 2 and p.parent.name == "cells":
        s = p.parent.parent.as_posix()
        return "." if s in ("", ".") else s
    return None


def overview(roots: list[Path] | None = None):
    """``scan`` + ``load_overview`` (no caching): ``(DataFrame, problems, missing roots)``."""
    roots = roots if roots is not None else configured_roots()
    s = scan(roots)
    df, problems = load_overview(s, roots)
    return df, problems, list(s.missing_roots)


# ---------------------------------------------------------------------------------------------- safety


def resolve_run(run_id: str, roots: list[Path]) -> Path:
    """The folder of run ``"<root index>:<rel>"``; raises ``UnsafePathError`` for anything outside the roots.

    Refused: non-string or overlong ids, NUL/backslash, an absolute ``rel``, any ``..`` part, a root
    index out of range, and a path whose resolved form (symlinks followed) is not under the root.
    """
    if not isinstance(run_id, str) or not run_id or len(run_id) > 1000:
        raise UnsafePathError("run id is empty or too long; pick a run from the Overview page.")
    if "\x00" in run_id or "\\" in run_id:
        raise UnsafePathError(f"run id {run_id[:80]!r} contains a forbidden character; refused.")
    head, sep, rel = run_id.partition(":")
    if not sep or not head.isdigit() or int(head) >= len(roots):
        raise UnsafePathError(
            f"run id {run_id[:80]!r} is not of the form <root index>:<folder>; pick a run from the Overview page."
        )
    parts = PurePosixPath(rel).parts
    if rel.startswith("/") or any(p == ".." for p in parts) or (len(rel) > 1 and rel[1] == ":"):
        raise UnsafePathError(f"run id {run_id[:80]!r} points outside the results folder; refused.")
    root = roots[int(head)]
    path = root / rel if rel else root
    if not _inside(path, root):
        raise UnsafePathError(f"run id {run_id[:80]!r} resolves outside the results folder; refused.")
    if not (path / REPORT).is_file():
        raise UnsafePathError(
            f"run id {run_id[:80]!r} names no run (no report.json there); pick one from the Overview page."
        )
    return path


def artifact(run_dir: Path, name: str, roots: list[Path]) -> Path | None:
    """``run_dir/name`` for a known artifact name, if it exists and stays inside a root; else None."""
    if name not in ARTIFACTS:
        raise UnsafePathError(f"{name!r} is not a run artifact the app reads.")
    p = run_dir / name
    if not p.is_file():
        return None
    if not any(_inside(p, r) for r in roots):
        raise UnsafePathError(f"{p} resolves outside the results folders; refused.")
    return p


def sweep_file(sweep_rel: str, root: Path, name: str) -> Path | None:
    """``root/sweep_rel/name`` for ``name`` in (thresholds.json, sweep.json), inside the root; else None."""
    if name not in ("thresholds.json", "sweep.json"):
        raise UnsafePathError(f"{name!r} is not a sweep file the app reads.")
    if sweep_rel.startswith("/") or ".." in PurePosixPath(sweep_rel).parts:
        raise UnsafePathError(f"sweep {sweep_rel!r} points outside the results folder; refused.")
    p = (root / sweep_rel / name) if sweep_rel not in ("", ".") else root / name
    if not p.is_file() or not _inside(p, root):
        return None
    return p


# ---------------------------------------------------------------------------------------------- one run


def read_report(run_dir: Path) -> dict:
    """The parsed report.json of a run folder (already resolved by ``resolve_run``)."""
    try:
        with open(run_dir / REPORT, encoding="utf-8") as f:
            rep = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DiffauditError(f"{run_dir / REPORT} cannot be read ({e}); the run is corrupt.") from None
    except RecursionError:
        raise DiffauditError(
            f"{run_dir / REPORT} is nested too deeply to parse; the run is corrupt or hostile."
        ) from None
    if not isinstance(rep, dict) or rep.get("schema") != SCHEMA:
        raise DiffauditError(f"{run_dir / REPORT} is not a {SCHEMA} report.")
    if nesting(rep) > MAX_NESTING:
        raise DiffauditError(
            f"{run_dir / REPORT} is nested deeper than {MAX_NESTING} levels (a report is about 6); skipped."
        )
    return rep


# A report the audit writes is about 6 levels deep; far deeper nesting is corrupt or hostile input.
MAX_NESTING = 32
_NUM = (int, float)
# The fields the pages read, with the JSON type each must have (parents before children): a field of
# another type is dropped with a note, so a schema-valid report with a wrong type is drawn without it.
_FIELD_TYPES: tuple[tuple[tuple[str, ...], type | tuple], ...] = (
    (("created",), str),
    (("inputs",), dict),
    (("inputs", "features"), dict),
    (("verdict",), dict),
    (("reasons",), dict),
    (("thresholds",), dict),
    (("probes",), dict),
    (("details",), dict),
    (("details", "memorization"), dict),
    (("details", "memorization", "rule"), str),
    (("details", "memorization", "ratio_threshold"), _NUM),
    (("details", "memorization", "holdout_threshold"), _NUM),
    (("details", "factors"), dict),
    (("details", "factors", "factor_names"), list),
    (("details", "factors", "wasserstein_rel"), dict),
    (("details", "factors", "ks"), dict),
    (("details", "factors", "tau"), _NUM),
    (("details", "factors", "reference_coverage"), _NUM),
    (("details", "membership"), dict),
    (("details", "membership", "roc"), dict),
    (("details", "membership", "roc", "fpr"), list),
    (("details", "membership", "roc", "tpr"), list),
    (("details", "membership", "sigmas"), list),
    (("details", "membership", "auc"), list),
    (("details", "cond_memorization"), dict),
    (("details", "cond_memorization", "scores"), list),
    (("details", "cond_memorization", "most_suspect"), str),
    (("details", "cond_memorization", "flagged"), list),
    (("details", "cond_memorization", "threshold_z"), _NUM),
    (("details", "cond_memorization", "flag_skipped"), str),
    (("details", "cond_memorization", "auc_skipped"), str),
    (("timings",), dict),
    (("skipped",), list),
    (("sweep",), dict),
    (("inputs", "condition"), dict),
    (("inputs", "condition", "kind"), str),
    (("inputs", "condition", "n_conditions"), _NUM),
    (("inputs", "condition", "source"), str),
    (("inputs", "condition", "names"), list),
    (("inputs", "condition", "guidance"), _NUM),
    (("conditions",), list),
    (("warnings",), list),
)
# Containers whose every element must have one type (elements of another type are dropped).
_ELEMENT_TYPES: tuple[tuple[tuple[str, ...], type | tuple], ...] = (
    (("verdict",), str),
    (("reasons",), str),
    (("thresholds",), (*_NUM, str)),
    (("probes",), dict),
    (("details", "factors", "factor_names"), str),
    (("details", "factors", "wasserstein_rel"), _NUM),
    (("details", "factors", "ks"), _NUM),
    (("details", "membership", "roc", "fpr"), _NUM),
    (("details", "membership", "roc", "tpr"), _NUM),
    (("details", "membership", "sigmas"), _NUM),
    (("details", "membership", "auc"), _NUM),
    (("details", "cond_memorization", "scores"), _NUM),
    (("details", "cond_memorization", "flagged"), str),
    (("timings",), _NUM),
    (("skipped",), dict),
    (("inputs", "condition", "names"), str),
    (("warnings",), str),
)
# The fields of one entry of a conditional audit's ``conditions`` list (report.json's per-condition audit),
# checked like the report's own: a field of the wrong type is dropped with a note, the entry is kept.
_CONDITION_FIELD_TYPES: tuple[tuple[tuple[str, ...], type | tuple], ...] = (
    (("condition",), str),
    (("value",), (str, *_NUM)),
    (("index",), int),
    (("n_generated",), _NUM),
    (("n_train",), _NUM),
    (("n_holdout",), _NUM),
    (("verdict",), dict),
    (("reasons",), dict),
    (("metrics",), dict),
    (("skipped",), list),
    (("robust_z",), _NUM),
    (("memorized",), bool),
)
_CONDITION_ELEMENT_TYPES: tuple[tuple[tuple[str, ...], type | tuple], ...] = (
    (("verdict",), str),
    (("reasons",), str),
    (("skipped",), dict),
)


def nesting(obj) -> int:
    """Depth of nested lists/objects (a scalar is 0), without recursion."""
    depth, stack = 0, [(obj, 1)]
    while stack:
        o, k = stack.pop()
        if isinstance(o, dict | list):
            depth = max(depth, k)
            if k <= MAX_NESTING:  # deeper is refused anyway: stop walking
                stack.extend((v, k + 1) for v in (o.values() if isinstance(o, dict) else o))
    return depth


def _get(rep: dict, path: tuple[str, ...]):
    o = rep
    for k in path:
        if not isinstance(o, dict):
            return None
        o = o.get(k)
    return o


def check_report(rep: dict) -> tuple[dict, list[str]]:
    """``rep`` with every field the pages read checked against its JSON type (a copy; fields and elements
    of the wrong type removed) and one note per removal, for the page to show as a warning.

    A conditional audit's ``conditions`` entries are checked the same way, field by field; an entry that is
    not an object is dropped. Every kept entry keeps (or gets) its ``index`` (its position in the report's
    list: copies.parquet's ``condition`` column points there), so dropping one never shifts the others."""
    rep = json.loads(json.dumps(rep))  # a copy; nesting is bounded by read_report
    notes: list[str] = []
    _check_fields(rep, _FIELD_TYPES, _ELEMENT_TYPES, "", notes)
    for g, grp in list((rep.get("probes") or {}).items()):
        for k in list(grp):
            _check_metric(grp, k, f"probes.{g}.{k}", notes)
    conds = rep.get("conditions")
    if isinstance(conds, list):
        kept = []
        for j, e in enumerate(conds):
            if not isinstance(e, dict):
                notes.append(f"conditions[{j}] is a {type(e).__name__}, not an object; ignored")
                continue
            _check_fields(e, _CONDITION_FIELD_TYPES, _CONDITION_ELEMENT_TYPES, f"conditions[{j}].", notes)
            e.setdefault("index", j)
            for k in list(e.get("metrics") or {}):
                _check_metric(e["metrics"], k, f"conditions[{j}].metrics.{k}", notes)
            kept.append(e)
        rep["conditions"] = kept
    return rep, notes


def report_warnings(rep: dict) -> list[str]:
    """The audit's own warnings (report.json ``warnings``: too few samples, a checkpoint trained on other data,
    ...) of a report checked by ``check_report``: its non-blank strings, in order; [] when it has none."""
    return [w for w in rep.get("warnings") or [] if isinstance(w, str) and w.strip()]


def _check_fields(obj: dict, fields, elements, where: str, notes: list[str]) -> None:
    """Drop (in place) the fields of ``obj`` and the container elements whose JSON type is wrong; note each."""
    for path, types in fields:
        parent = _get(obj, path[:-1]) if len(path) > 1 else obj
        if not isinstance(parent, dict) or parent.get(path[-1]) is None:
            continue
        v = parent[path[-1]]
        if not _typed(v, types):
            del parent[path[-1]]
            notes.append(
                f"field {where}{'.'.join(path)} is a {type(v).__name__}, not a {_type_name(types)}; ignored"
            )
    for path, types in elements:
        c = _get(obj, path)
        if isinstance(c, dict):
            bad = [k for k, v in c.items() if v is not None and not _typed(v, types)]
            for k in bad:
                del c[k]
        elif isinstance(c, list):
            bad = [v for v in c if v is not None and not _typed(v, types)]
            c[:] = [v for v in c if v is None or _typed(v, types)]
        else:
            continue
        if bad:
            notes.append(
                f"{len(bad)} element(s) of {where}{'.'.join(path)} are not {_type_name(types)}s; ignored"
            )


def _check_metric(grp: dict, k: str, where: str, notes: list[str]) -> None:
    """``grp[k]`` must be None (not measured) or ``{"value": number | null, "ci": [lo, hi] | null}``: a
    metric that is not is dropped, an interval that is not a pair of numbers is dropped from it."""
    m = grp[k]
    if m is None:  # a metric the audit did not measure
        return
    ok = isinstance(m, dict) and (m.get("value") is None or _typed(m.get("value"), _NUM))
    ci = m.get("ci") if isinstance(m, dict) else None
    if (
        ok
        and ci is not None
        and not (isinstance(ci, list) and len(ci) == 2 and all(c is None or _typed(c, _NUM) for c in ci))
    ):
        m.pop("ci")
        notes.append(f"{where}.ci is not a pair of numbers; ignored")
    if not ok:
        del grp[k]
        notes.append(f"{where} is not a metric with a numeric value; ignored")


def _typed(v, types) -> bool:
    """``isinstance`` where a JSON boolean is not a number."""
    if isinstance(v, bool):
        return types is bool or (isinstance(types, tuple) and bool in types)
    return isinstance(v, types)


def _type_name(types) -> str:
    names = {dict: "object", list: "list", str: "string", int: "number", float: "number"}
    ts = types if isinstance(types, tuple) else (types,)
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in ts))


def read_parquet(path: Path, sql: str = "SELECT * FROM {src}", con=None, params: list | None = None):
    """DuckDB over one parquet file (``{src}`` in ``sql``); returns a DataFrame."""
    own = con is None
    con = con or connect()
    try:
        q = sql.replace("{src}", "read_parquet(?)")
        return con.cursor().execute(q, [str(path), *(params or [])]).df()
    except Exception as e:  # duckdb raises its own IOException / InvalidInputException types
        raise DiffauditError(f"{path} cannot be read as parquet ({str(e).splitlines()[0]}).") from None
    finally:
        if own:
            con.close()


def metrics_table(run_dir: Path, report: dict, con=None, use_parquet: bool = True):
    """name, group, value, ci_lo, ci_hi: from metrics.parquet (DuckDB), else from the report itself."""
    import pandas as pd

    p = run_dir / "metrics.parquet"
    if use_parquet and p.is_file():
        return read_parquet(p, 'SELECT name, "group", value, ci_lo, ci_hi FROM {src}', con=con)
    rows = []
    for g, grp in (report.get("probes") or {}).items():
        for k, m in (grp or {}).items():
            ci = (m or {}).get("ci") or [None, None]
            rows.append(
                {
                    "name": f"{g}.{k}",
                    "group": g,
                    "value": None if m is None else m.get("value"),
                    "ci_lo": ci[0],
                    "ci_hi": ci[1],
                }
            )
    return pd.DataFrame(rows, columns=["name", "group", "value", "ci_lo", "ci_hi"])


def metric_view(mt):
    """The metrics table of one run described by the schema, in schema order: every schema row (missing
    ones with NaN values, so an older report shows them as missing), family members and unknown names.

    ``mt``: ``metrics_table``'s frame. Adds ``metric`` (label), ``unit``, ``better``, ``informs``
    (the verdict it informs), ``public`` and ``help``; ``convergence.fd_ratio`` is filled by ``fd_ratio``.
    """
    import pandas as pd

    by_name = mt.drop_duplicates("name").set_index("name")
    rows = []
    for key, m in ordered_metrics(mt["name"].tolist(), every_row=True):
        r = by_name.loc[key] if key in by_name.index else None
        rows.append(
            {
                "name": key,
                "group": key.partition(".")[0],
                "metric": schema.label(key),
                **{c: (None if r is None else r[c]) for c in ("value", "ci_lo", "ci_hi")},
                "unit": m.unit if m else "",
                "better": (m.better or "") if m else "",
                "informs": (m.threshold or "") if m else "",
                "public": bool(m and m.public),
                "help": m.help if m else "not a row of the metric schema",
            }
        )
    out = pd.DataFrame(
        rows,
        columns=[
            "name",
            "group",
            "metric",
            "value",
            "ci_lo",
            "ci_hi",
            "unit",
            "better",
            "informs",
            "public",
            "help",
        ],
    )
    for c in ("value", "ci_lo", "ci_hi"):
        out[c] = pd.to_numeric(out[c], errors="coerce")
    val = out.set_index("name")["value"]
    args = [
        pd.Series([val[k]], dtype=float)
        for k in (FD_RATIO, "convergence.fd_equal_n", "convergence.fd", "convergence.fd_train_holdout")
    ]  # one shared index
    out.loc[out["name"] == FD_RATIO, "value"] = fd_ratio(*args).to_numpy()
    return out


# ---------------------------------------------------------------------------------------------- conditions

# The per-condition table's main columns: report.html's (``CONDITION_COLUMNS``) and every metric of the schema
# that only a conditional audit measures (e.g. the Wen et al. detector's score); shown when a report has them.
CONDITION_MAIN = tuple(
    dict.fromkeys(
        [k for k, _ in CONDITION_COLUMNS]
        + [m.key for m in schema.METRICS if "conditional" in m.needs and not m.is_family]
    )
)


def condition_info(rep: dict) -> dict | None:
    """``{"kind", "n", "source", "guidance"}`` of a conditional audit (a report checked by ``check_report``), or
    None for an unconditional one (no ``conditions`` and no ``inputs.condition``)."""
    spec = (rep.get("inputs") or {}).get("condition")
    conds = rep.get("conditions")
    if not isinstance(spec, dict) and not conds:
        return None
    spec = spec if isinstance(spec, dict) else {}
    n = spec.get("n_conditions")
    return {
        "kind": spec.get("kind") or "condition",
        "n": int(n) if isinstance(n, int | float) and n == n else len(conds or []),
        "source": spec.get("source"),
        "guidance": spec.get("guidance"),
    }


def condition_frame(rep: dict):
    """One row per entry of a conditional audit's ``conditions`` (a report checked by ``check_report``) and the
    metric keys any entry measured, in schema order.

    Columns: ``index`` (the entry's position: copies.parquet's ``condition``), ``condition`` (its name, "#j"
    when the report has none), ``value`` (label or prompt, as text), ``n_train``, ``n_generated``,
    ``n_holdout``, the three verdicts (named as in ``VERDICTS``; "n/a" when absent), ``reason_<verdict>``,
    ``skipped`` ("probe: reason; ..."), ``robust_z`` / ``memorized`` (the detector's, when reported), then one
    float column per metric key (its value; NaN where an entry lacks it).
    """
    import pandas as pd

    entries = [e for e in rep.get("conditions") or [] if isinstance(e, dict)]
    keys = [
        k
        for k, _ in ordered_metrics(
            [
                k
                for e in entries
                for k, m in (e.get("metrics") or {}).items()
                if m and m.get("value") is not None
            ]
        )
    ]
    rows = []
    for j, e in enumerate(entries):
        idx = e.get("index", j)
        reasons = e.get("reasons") or {}
        row = {
            "index": idx,
            "condition": e["condition"] if "condition" in e else f"#{idx}",
            "value": None if e.get("value") is None else str(e["value"]),
            "n_train": e.get("n_train"),
            "n_generated": e.get("n_generated"),
            "n_holdout": e.get("n_holdout"),
            **{v: (e.get("verdict") or {}).get(v) or "n/a" for v in VERDICTS},
            **{f"reason_{v}": reasons.get(v) for v in VERDICTS},
            "skipped": "; ".join(
                f"{s.get('probe', '?')}: {s.get('reason', '')}" for s in e.get("skipped") or []
            ),
            "robust_z": e.get("robust_z"),
            "memorized": e.get("memorized"),
        }
        metrics = e.get("metrics") or {}
        for k in keys:
            m = metrics.get(k)
            row[k] = None if m is None else m.get("value")
        rows.append(row)
    base = ["index", "condition", "value", "n_train", "n_generated", "n_holdout", *VERDICTS]
    base += [f"reason_{v}" for v in VERDICTS] + ["skipped", "robust_z", "memorized"]
    out = pd.DataFrame(rows, columns=base + keys)
    for c in ("index", "n_train", "n_generated", "n_holdout"):
        out[c] = pd.to_numeric(out[c], errors="coerce").round().astype("Int64")
    for c in ["robust_z", *keys]:
        out[c] = pd.to_numeric(out[c], errors="coerce").astype(float)
    return out, keys


def condition_comparison(
    frames: dict, verdict: str = "memorization", metric: str = "memorization.copy_rate", labels=None
):
    """Several conditional audits' per-condition results side by side (the Compare page): one row per condition
    name, the union of every run's in the order first seen; per run (in ``frames``' order) its ``verdict`` of
    that condition ("—" when the run has no such condition) and its ``metric`` value (NaN when absent).

    ``frames``: run label -> ``condition_frame``'s frame. ``labels``: (verdict title, metric title) of the
    columns, named ``"<run> · <title>"``; default the verdict's and the metric's keys. Conditions are matched
    by name; a name repeated within one run keeps its first entry there and matches the others as
    ``"<name> #<index>"``.
    """
    import pandas as pd

    v_title, m_title = labels or (verdict, metric)
    rows: dict[str, dict] = {}
    for run, cf in frames.items():
        seen: set[str] = set()
        for _, r in cf.iterrows():
            name = str(r["condition"])
            key = name if name not in seen else f"{name} #{r['index']}"
            seen.add(key)
            row = rows.setdefault(key, {})
            row[f"{run} · {v_title}"] = r[verdict] if verdict in cf.columns else "n/a"
            row[f"{run} · {m_title}"] = r[metric] if metric in cf.columns else None
    cols = [c for run in frames for c in (f"{run} · {v_title}", f"{run} · {m_title}")]
    out = pd.DataFrame([{"condition": k, **v} for k, v in rows.items()], columns=["condition", *cols])
    for run in frames:
        out[f"{run} · {v_title}"] = out[f"{run} · {v_title}"].fillna("—")
        out[f"{run} · {m_title}"] = pd.to_numeric(out[f"{run} · {m_title}"], errors="coerce").astype(float)
    return out


def copies_columns(copies_path: Path, con=None) -> list[str]:
    """The column names of copies.parquet (e.g. whether it has a conditional audit's ``condition``)."""
    return read_parquet(copies_path, "SELECT * FROM {src} LIMIT 0", con=con).columns.tolist()


def condition_rows(copies_path: Path, condition: int, con=None):
    """Indices (``index``) of the generated samples of condition ``condition``, sorted (int64 array)."""
    df = read_parquet(
        copies_path,
        'SELECT "index" FROM {src} WHERE condition = ? ORDER BY "index"',
        con=con,
        params=[int(condition)],
    )
    return df["index"].to_numpy(dtype="int64")


_PLOTLY_SRC = re.compile(rb"<script type='text/javascript' src='([^']+)'>")


def html_plotly_src(path: Path) -> str | None:
    """The shared plotly.js a report.html loads (sweep cells), or None when the page is self-contained."""
    try:
        with open(path, "rb") as f:
            head = f.read(16384)  # the <script> sits in <head>, after ~1.5 kB of CSS
    except OSError:
        return None
    m = _PLOTLY_SRC.search(head)
    return m.group(1).decode("ascii", "replace") if m else None


def copies_where(only_copies: bool = False, condition: int | None = None) -> tuple[str, list]:
    """The WHERE clause (and its parameters) that keeps copies only and/or the samples of one condition."""
    parts, params = [], []
    if only_copies:
        parts.append("is_copy")
    if condition is not None:
        parts.append("condition = ?")
        params.append(int(condition))
    return ("WHERE " + " AND ".join(parts) if parts else ""), params


def most_copied(copies_path: Path, limit: int = 20, con=None, condition: int | None = None):
    """Training items that are nearest neighbour of the most generated samples (copies counted apart);
    ``condition``: only the generated samples of that condition (a conditional audit's copies.parquet)."""
    where, params = copies_where(False, condition)
    return read_parquet(
        copies_path,
        "SELECT nn_index AS train_index, count(*) FILTER (WHERE is_copy) AS copies, count(*) AS nearest_of, "
        f"min(d1) AS min_d1, min(ratio) AS min_ratio FROM {{src}} {where} GROUP BY nn_index "
        "ORDER BY copies DESC, nearest_of DESC, train_index LIMIT ?",
        con=con,
        params=[*params, int(limit)],
    )


def copies_count(copies_path: Path, only_copies: bool = False, condition: int | None = None, con=None) -> int:
    where, params = copies_where(only_copies, condition)
    df = read_parquet(copies_path, f"SELECT count(*) AS n FROM {{src}} {where}", con=con, params=params)
    return int(df["n"].iloc[0])


def copies_page(
    copies_path: Path,
    order: str,
    page: int,
    page_size: int,
    only_copies: bool,
    con=None,
    condition: int | None = None,
):
    """One page of copies.parquet sorted by ``order`` (a column name from a fixed list) and its row count;
    ``condition``: only the generated samples of that condition (a conditional audit's copies.parquet)."""
    allowed = {
        "ratio": "ratio ASC, d1 ASC",
        "d1": "d1 ASC, ratio ASC",
        "d2": "d2 ASC",
        "index": '"index" ASC',
        "ratio (desc)": "ratio DESC",
        "d1 (desc)": "d1 DESC",
    }
    if order not in allowed:
        raise DiffauditError(f"sort key {order!r} unknown; use one of {', '.join(allowed)}.")
    where, params = copies_where(only_copies, condition)
    n = copies_count(copies_path, only_copies, condition, con=con)
    df = read_parquet(
        copies_path,
        f"SELECT * FROM {{src}} {where} ORDER BY {allowed[order]} LIMIT ? OFFSET ?",
        con=con,
        params=[*params, int(page_size), int(page) * int(page_size)],
    )
    return df, n


def load_thumbs(path: Path) -> dict:
    """Arrays of thumbs.npz (uint8 images (n, h, w, c) and their indices); never unpickles."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError) as e:
        raise DiffauditError(f"{path} cannot be read ({e}).") from None


def read_json_file(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            out = json.load(f)
        return out if isinstance(out, dict) else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def paginate(n_rows: int, page_size: int) -> int:
    """Number of pages for ``n_rows`` (at least 1)."""
    return max(1, -(-int(n_rows) // max(1, int(page_size))))
