"""``diffaudit embed``: features written match the library's reference; user mistakes are one ``error:`` line."""

from __future__ import annotations

import numpy as np
import pytest

from diffaudit.cli import main as cli_main


def test_embed_command(images, tmp_path, capsys, block_mean):
    np.save(tmp_path / "x.npy", images)
    out = tmp_path / "f.npy"
    cli_main(["embed", str(tmp_path / "x.npy"), "--features", "pixels:4", "--out", str(out), "--quiet"])
    np.testing.assert_array_equal(np.load(out), block_mean(images, 4).astype(np.float32).reshape(2, -1))
    with pytest.raises(SystemExit) as e:
        cli_main(["embed", str(tmp_path / "x.npy"), "--features", "inception", "--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "DIFFAUDIT_INCEPTION_WEIGHTS" in err and "Traceback" not in err


@pytest.mark.parametrize("bad", ["0", "-1", "many"])
def test_embed_batch_size_out_of_range_is_one_error_line(bad, images, tmp_path, capsys):
    np.save(tmp_path / "x.npy", images)
    out = tmp_path / "f.npy"
    with pytest.raises(SystemExit) as e:
        cli_main(["embed", str(tmp_path / "x.npy"), "--out", str(out), "--batch-size", bad, "--quiet"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--batch-size" in err and err.count("\n") == 1
    assert not out.exists()
    # control: the smallest valid value is accepted
    cli_main(["embed", str(tmp_path / "x.npy"), "--out", str(out), "--batch-size", "1", "--quiet"])
    np.testing.assert_array_equal(np.load(out), images.reshape(2, -1))


def test_embed_help_lists_feature_spaces(capsys):
    cli_main(["embed", "--help"])  # main() runs click with standalone_mode=False: help returns, no exit
    text = capsys.readouterr().out
    assert "--features" in text and "clip:ARCH" in text and "x>=1" in text
