"""The metric schema is the one list of metrics: every row is filled by exactly one audit stage and produced on a
real audit, every produced metric has a row, and the report shows each produced metric by its schema label."""

import json

import pytest

from diffaudit.models.adapters import load_model
from diffaudit.pipeline.config import AuditConfig
from diffaudit.pipeline.run import run_audit
from diffaudit.pipeline.setup import synthetic_data
from diffaudit.pipeline.stages import NOT_IN_AUDIT, STAGES
from diffaudit.report import schema


def test_every_row_has_exactly_one_stage_and_every_fill_has_a_row():
    owner = {}
    for st in STAGES:
        for key in st.fills:
            assert schema.get(key) is not None and schema.get(key).key == key, (
                f"{st.name} fills unknown {key}"
            )
            assert key not in owner, f"{key} filled by {owner.get(key)} and {st.name}"
            owner[key] = st.name
    assert set(owner) == {m.key for m in schema.METRICS}


def test_row_needs_cover_the_stage_needs():
    rows = {m.key: m for m in schema.METRICS}
    for st in STAGES:
        for key in st.fills:
            assert set(st.needs) - {"reference"} <= set(rows[key].needs), (st.name, key)


def test_schema_rows_are_well_formed():
    for m in schema.METRICS:
        assert m.group in schema.GROUPS and m.name and m.label and m.help
        assert m.better in (None, "lower", "higher") and m.threshold in (None, *schema.VERDICTS)
        assert set(m.needs) <= {"holdout", "dataset", "white_box", "images", "conditional"}
    assert {m.sweep for m in schema.METRICS if m.sweep} == {"n1", "n2"}
    assert schema.get("factors.w1_c1").key == "factors.w1_*" and schema.get("factors.nope") is None
    assert NOT_IN_AUDIT  # the probes that do not run in an audit are listed with a reason
    assert all(isinstance(v, str) and len(v) > 20 for v in NOT_IN_AUDIT.values())


@pytest.fixture(scope="module")
def full_audit(tmp_path_factory):
    # a white-box model with a holdout large enough for every metric (TPR at 1 % FPR needs >= 1000 held-out
    # evaluation non-members, i.e. 2000 holdout rows: half of them choose sigma)
    data = synthetic_data("hidden-manifold:d=8,D=2", 2000, 2000, seed=0)
    model = load_model("control:memorizer", train=data.train, dataset=data.dataset, num_steps=8)
    out = tmp_path_factory.mktemp("schema") / "r"
    rep = run_audit(
        model,
        train=data.train,
        holdout=data.holdout,
        dataset=data.dataset,
        out_dir=out,
        config=AuditConfig(n_samples=400, n_boot=2, kid_subsets=4, mia_draws=1),
        train_z=data.train_z,
        holdout_z=data.holdout_z,
    )
    return out, rep


def test_every_row_is_produced_on_a_full_audit(full_audit):
    _, rep = full_audit
    produced = {f"{g}.{k}" for g, grp in rep["probes"].items() for k, v in grp.items() if v is not None}
    for key in produced:
        assert schema.get(key) is not None, f"{key} has no schema row"
    missing = [
        m.key
        for m in schema.METRICS
        if not (m.is_family and any(schema.get(k) is m for k in produced))
        and m.key not in produced
        and "images" not in m.needs  # vector data: checked on the image audit below
        and "conditional" not in m.needs  # an unconditional model: checked on the conditional audit below
    ]
    assert missing == [], f"schema rows never produced: {missing}"
    assert rep["skipped"] == []


def test_report_shows_every_produced_metric_by_its_label(full_audit):
    out, rep = full_audit
    html = (out / "report.html").read_text()
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["probes"] == json.loads(json.dumps(rep["probes"]))
    for g, grp in rep["probes"].items():
        for k, v in grp.items():
            if v is not None:
                row = schema.get(f"{g}.{k}")
                assert row.label in html, f"{g}.{k}: label {row.label!r} not in report.html"


def test_image_rows_are_produced_and_shown_on_an_image_audit(tmp_path):
    # the full audit above is on vectors; rows that need images (partial copies) are checked on a small sprites
    # audit of the memorizer, with the transform of each copy in copies.parquet and beside each pair in the HTML
    import pandas as pd

    data = synthetic_data("sprites:size=16", 300, 1000, seed=0)
    model = load_model("control:memorizer", train=data.train, num_steps=8)
    out = tmp_path / "img"
    rep = run_audit(
        model,
        train=data.train,
        holdout=data.holdout,
        out_dir=out,
        config=AuditConfig(
            n_samples=200, n_boot=0, kid_subsets=2, kid_subset_size=100, mia_n=100, mia_draws=1
        ),
    )
    image_rows = [m for m in schema.METRICS if "images" in m.needs]
    assert image_rows
    html = (out / "report.html").read_text()
    for m in image_rows:
        assert rep["probes"][m.group].get(m.name) is not None, m.key
        assert m.label in html
    cp = pd.read_parquet(out / "copies.parquet")
    assert {"transform", "is_partial_copy", "partial_tiles"} <= set(cp.columns)
    assert cp["is_copy"].mean() >= 0.95 and (cp["transform"] == "identity").mean() >= 0.95
    assert "transform <code>identity</code>" in html


def test_conditional_rows_are_produced_on_a_conditional_audit():
    """The detector's rows on a class-conditional audit of 10 classes (flags need >= 10 conditions); its AUC
    needs known memorized labels: tests/audit/pipeline/test_prompt_audit.py checks it on a prompts file."""
    data = synthetic_data("digits", 400, 400, seed=0)
    model = load_model(
        "control:memorizer", train=data.train, num_steps=4, train_labels=data.train_labels, n_classes=10
    )
    rep = run_audit(
        model,
        train=data.train,
        holdout=data.holdout,
        config=AuditConfig(
            condition="labels",
            n_samples=200,
            n_boot=0,
            kid_subsets=2,
            kid_subset_size=50,
            mia_n=50,
            extraction_budget=0,
        ),
        train_labels=data.train_labels,
        holdout_labels=data.holdout_labels,
    )
    produced = {f"{g}.{k}" for g, grp in rep["probes"].items() for k, v in grp.items() if v is not None}
    assert {"memorization.cond_score", "memorization.cond_flagged"} <= produced
    assert len(rep["conditions"]) == 10
    assert all("memorization.cond_score" in c["metrics"] for c in rep["conditions"])
