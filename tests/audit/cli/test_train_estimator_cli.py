"""``diffaudit train --noise-draws/--sigma-sampling/--sigma-proposal-std/--grad-variance`` (issue 13, part 4):
bad values are one ``error:`` line and exit 2 before any work; good ones reach the checkpoint's config.json
and stats.jsonl."""

from __future__ import annotations

import json

import pytest
import torch

from diffaudit.cli import main as cli_main

DATA = ["--dataset", "hidden-manifold:d=8,D=2", "--n-train", "32", "--model", "mlp:width=16,depth=2"]


@pytest.fixture(autouse=True)
def _restore_threads():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--noise-draws", "0"], "--noise-draws"),
        (["--noise-draws", "two"], "--noise-draws"),
        (["--sigma-sampling", "sobol"], "--sigma-sampling"),
        (["--grad-variance", "-1"], "--grad-variance"),
        (["--grad-variance", "1"], "grad_variance must be 0 (off) or a number of gradients >= 2"),
        (["--sigma-proposal-std", "-1"], "--sigma-proposal-std"),
        (["--sigma-proposal-std", "0.5"], "infinite variance"),
        # 32 x 1e8 evaluations a step: ~400 GiB of draws, refused before any work (was a raw allocator traceback)
        (["--batch", "32", "--noise-draws", "100000000"], "lower --noise-draws or --batch"),
    ],
)
def test_bad_estimator_options_exit_2_with_one_error_line(tmp_path, capsys, args, needle):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        cli_main(["train", *DATA, "--steps", "2", "--device", "cpu", "--out", str(out), *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err
    assert not out.exists()  # nothing written for a rejected run


def test_estimator_options_reach_config_and_stats(tmp_path, capsys):
    out = tmp_path / "run"
    opts = ["--noise-draws", "3", "--sigma-sampling", "stratified", "--sigma-proposal-std", "1.5"]
    cli_main(["train", *DATA, "--steps", "4", "--batch", "8", "--device", "cpu", "--out", str(out), "--quiet",
              *opts, "--grad-variance", "3"])  # fmt: skip
    train_cfg = json.loads((out / "config.json").read_text())["train"]
    assert train_cfg["noise_draws"] == 3 and train_cfg["sigma_sampling"] == "stratified"
    assert train_cfg["sigma_proposal_std"] == 1.5 and train_cfg["grad_variance"] == 3
    lines = [json.loads(s) for s in (out / "stats.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 4 and lines[-1]["grad_var"] > 0
    assert "trained" in capsys.readouterr().out
