"""Text-to-image audits from the CLI (issue 14, part 3): a tiny random Stable Diffusion pipeline, a JSONL prompts
file tying training images to prompts, per-prompt results, the detector's scores and AUC, and the bad inputs."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from diffaudit.cli import main
from diffaudit.models.adapters import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["a photo of a red cat", "a blue dog", "a cat", "a red dog"]


def _png(path, rng):
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def prompt_files(tiny_sd, tmp_path_factory):
    d = tmp_path_factory.mktemp("prompts")
    rng = np.random.default_rng(0)
    (d / "img").mkdir()
    # prompt 0's training image IS the model's generation 0 (prompt 0, audit seed 0): a planted copy
    model = load_model(f"diffusers:{tiny_sd[0]}", device="cpu", num_steps=3, guidance=7.5)
    x0 = model.sample(1, seed=0, cond=[PROMPTS[0]])[0]
    Image.fromarray(np.round((x0.transpose(1, 2, 0) + 1) * 127.5).clip(0, 255).astype(np.uint8)).save(
        d / "img" / "0.png"
    )
    for i in range(1, 4):
        _png(d / "img" / f"{i}.png", rng)
    lines = [
        {"prompt": PROMPTS[0], "image": "img/0.png", "memorized": True},
        {"prompt": PROMPTS[1], "image": "img/1.png", "memorized": False},
        {"prompt": PROMPTS[2], "image": "img/2.png", "memorized": True},
        {"prompt": PROMPTS[3], "image": "img/3.png", "memorized": False},
    ]
    (d / "prompts.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (d / "holdout").mkdir()
    for i in range(24):
        _png(d / "holdout" / f"{i}.png", rng)
    (d / "empty.txt").write_text("\n\n")
    (d / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    broken = d / "broken_pipe"
    shutil.copytree(tiny_sd[0], broken)
    shutil.rmtree(broken / "vae")
    return d


def _audit(argv, capsys):
    try:
        main(["audit", "--no-progress", *argv])
        code = 0
    except SystemExit as e:
        code = e.code or 0
    return code, capsys.readouterr().err


def test_prompt_audit_end_to_end(tiny_sd, prompt_files, tmp_path, capsys):
    d, out = prompt_files, tmp_path / "rep"
    argv = [
        "--model",
        f"diffusers:{tiny_sd[0]}",
        "--condition",
        "prompts",
        "--prompts",
        str(d / "prompts.jsonl"),
        "--holdout",
        str(d / "holdout"),
        "--n-samples",
        "8",
        "--num-steps",
        "3",
        "--extraction-budget",
        "0",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    code, err = _audit(argv, capsys)
    assert code == 0, err
    rep = json.loads((out / "report.json").read_text())
    assert rep["inputs"]["condition"]["kind"] == "prompts" and rep["inputs"]["condition"]["guidance"] == 7.5
    conds = rep["conditions"]
    assert [c["condition"] for c in conds] == PROMPTS
    assert [c["n_train"] for c in conds] == [1, 1, 1, 1] and [c["n_generated"] for c in conds] == [2] * 4
    assert [c["memorized"] for c in conds] == [True, False, True, False]
    # the planted copy: generation 0 (prompt 0) is its own training image, up to PNG rounding
    cp = pd.read_parquet(out / "copies.parquet")
    assert list(cp["condition_name"][:4]) == PROMPTS
    assert cp.loc[0, "nn_index"] == 0 and cp.loc[0, "d1"] < 0.05
    # the detector scored every prompt; the AUC against the file's labels is reported (4 prompts: no flags)
    scores = [c["metrics"]["memorization.cond_score"]["value"] for c in conds]
    assert all(s > 0 for s in scores)
    assert rep["probes"]["memorization"]["cond_score"]["value"] == pytest.approx(max(scores))
    assert rep["probes"]["memorization"]["cond_auc"] is not None
    assert rep["probes"]["memorization"]["cond_flagged"] is None
    assert "at least 10" in rep["details"]["cond_memorization"]["flag_skipped"]
    # white-box probes that need a denoiser of the images themselves say why they did not run
    reasons = {s["probe"]: s["reason"] for s in rep["skipped"]}
    assert "latent space" in reasons["membership"] and "latent space" in reasons["basin"]
    assert "Per prompt" in (out / "report.html").read_text()


@pytest.mark.parametrize(
    "case, argv_tail, expect",
    [
        ("empty prompts file", ["--prompts", "{d}/empty.txt", "--train", "{d}/holdout"], "no prompts"),
        ("not UTF-8", ["--prompts", "{d}/latin1.txt", "--train", "{d}/holdout"], "UTF-8"),
        (
            "prompts without condition",
            ["--prompts", "{d}/prompts.jsonl", "--no-condition"],
            "--condition prompts",
        ),
        (
            "labels on a prompt model",
            ["--train", "{d}/holdout", "--labels-condition"],
            "conditional on prompts",
        ),
        ("pipeline missing a component", ["--prompts", "{d}/prompts.jsonl", "--broken"], "vae"),
    ],
)
def test_prompt_audit_bad_input_exit_2_no_report(
    tiny_sd, prompt_files, tmp_path, capsys, case, argv_tail, expect
):
    d, out = prompt_files, tmp_path / "rep"
    tail = [a.format(d=d) for a in argv_tail]
    model, condition = f"diffusers:{tiny_sd[0]}", ["--condition", "prompts"]
    if "--no-condition" in tail:
        tail.remove("--no-condition")
        condition = []
    if "--labels-condition" in tail:
        tail.remove("--labels-condition")
        condition = ["--condition", "labels", "--train-labels", str(d / "labels.txt")]
        (d / "labels.txt").write_text("\n".join(["0"] * 24) + "\n")
    if "--broken" in tail:
        tail.remove("--broken")
        model = f"diffusers:{d / 'broken_pipe'}"
    code, err = _audit(
        ["--model", model, *condition, *tail, "--n-samples", "4", "--device", "cpu", "--out", str(out)],
        capsys,
    )
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], err
    assert not out.exists()
