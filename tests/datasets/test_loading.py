"""Loading user samples: every format round-trips to the normal form; every bad input is a DiffauditError."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from diffaudit.datasets.loading import list_image_files, load_samples, save_samples, to_normal_form
from diffaudit.errors import DiffauditError


@pytest.fixture
def vec(rng):
    return rng.normal(size=(7, 5)).astype(np.float32)


@pytest.fixture
def img(rng):
    return rng.uniform(-1, 1, size=(4, 3, 6, 5)).astype(np.float32)


# ------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("which", ["vec", "img"])
def test_npy_npz_pt_safetensors_round_trip(tmp_path, which, vec, img):
    a = vec if which == "vec" else img
    np.save(tmp_path / "a.npy", a)
    np.savez(tmp_path / "a.npz", samples=a)
    torch.save(torch.from_numpy(a), tmp_path / "a.pt")
    save_file({"x": torch.from_numpy(a)}, str(tmp_path / "a.safetensors"))
    for f in ["a.npy", "a.npz", "a.pt", "a.safetensors"]:
        out = load_samples(tmp_path / f)
        assert out.dtype == np.float32 and out.flags.c_contiguous
        np.testing.assert_array_equal(out, a)


def test_named_keys(tmp_path, vec):
    other = vec[:3] * 2
    np.savez(tmp_path / "two.npz", gen=vec, ref=other)
    torch.save({"gen": torch.from_numpy(vec), "ref": torch.from_numpy(other)}, tmp_path / "two.pt")
    save_file(
        {"gen": torch.from_numpy(vec), "ref": torch.from_numpy(other)}, str(tmp_path / "two.safetensors")
    )
    for f in ["two.npz", "two.pt", "two.safetensors"]:
        np.testing.assert_array_equal(load_samples(tmp_path / f, key="ref"), other)
        with pytest.raises(DiffauditError, match=r"several .*'gen', 'ref'"):
            load_samples(tmp_path / f)
        with pytest.raises(DiffauditError, match=r"no .* named 'nope'.*'gen', 'ref'"):
            load_samples(tmp_path / f, key="nope")


def test_pt_dict_with_one_tensor_and_metadata(tmp_path, vec):
    torch.save({"samples": torch.from_numpy(vec), "step": 3}, tmp_path / "d.pt")
    np.testing.assert_array_equal(load_samples(tmp_path / "d.pt"), vec)


def test_bfloat16_and_half_tensors(tmp_path, vec):
    t = torch.from_numpy(vec).to(torch.bfloat16)
    torch.save(t, tmp_path / "b.pt")
    save_file({"x": t}, str(tmp_path / "b.safetensors"))
    for f in ["b.pt", "b.safetensors"]:
        np.testing.assert_array_equal(load_samples(tmp_path / f), t.float().numpy())


def _u8(a):
    """Reference mapping: v / 127.5 - 1 in exact rational arithmetic, rounded once to float32."""
    from fractions import Fraction

    table = np.array([float(Fraction(2 * v - 255, 255)) for v in range(256)], dtype=np.float64)
    return table.astype(np.float32)[a]


def test_uint8_mapping_is_exact(tmp_path):
    # every pixel value 0..255 appears; 0 -> -1 and 255 -> 1 exactly, symmetric about 127.5
    v = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    a = np.concatenate([v, v[:, :, ::-1]])
    np.save(tmp_path / "u.npy", a)
    out = load_samples(tmp_path / "u.npy")
    np.testing.assert_array_equal(out, _u8(a))
    assert out[0, 0, 0, 0] == -1.0 and out[0, 0, -1, -1] == 1.0
    flat = out[0].reshape(-1)
    np.testing.assert_array_equal(flat, -flat[::-1])
    assert np.all(np.diff(flat) > 0)
    np.testing.assert_allclose(flat, np.arange(256) / 127.5 - 1, rtol=0, atol=6e-8)


def test_uint8_nhwc_transposed_and_alpha_dropped(rng):
    a = rng.integers(0, 256, size=(3, 8, 9, 3), dtype=np.uint8)
    out = to_normal_form(a)
    assert out.shape == (3, 3, 8, 9)
    np.testing.assert_array_equal(out, _u8(a.transpose(0, 3, 1, 2)))
    rgba = rng.integers(0, 256, size=(3, 8, 9, 4), dtype=np.uint8)
    out = to_normal_form(rgba)
    assert out.shape == (3, 3, 8, 9)
    np.testing.assert_array_equal(out, _u8(rgba[..., :3].transpose(0, 3, 1, 2)))
    # NCHW uint8 stays NCHW
    nchw = rng.integers(0, 256, size=(3, 3, 8, 9), dtype=np.uint8)
    assert to_normal_form(nchw).shape == (3, 3, 8, 9)


def test_grayscale_3d_gets_channel_axis(tmp_path, rng):
    a = rng.integers(0, 256, size=(5, 7, 6), dtype=np.uint8)
    np.save(tmp_path / "g.npy", a)
    out = load_samples(tmp_path / "g.npy")
    assert out.shape == (5, 1, 7, 6)
    np.testing.assert_array_equal(out[:, 0], _u8(a))


def test_float_images_outside_range_error_with_fix(rng):
    a = rng.uniform(0, 255, size=(3, 3, 4, 4)).astype(np.float32)
    with pytest.raises(DiffauditError, match=r"outside \[-1, 1\].*uint8.*x / 127.5 - 1"):
        to_normal_form(a, "gen.npy")
    with pytest.raises(DiffauditError, match="channels-last"):
        to_normal_form(rng.uniform(-1, 1, size=(2, 8, 8, 3)).astype(np.float32))
    # round-off overshoot within tolerance is clipped, not refused
    b = np.full((2, 1, 2, 2), 1.0005, np.float32)
    assert to_normal_form(b).max() == 1.0


def _write_png(path: Path, a: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a, mode=mode).save(path)


def test_png_folder_nested_sorted_rgb(tmp_path, rng):
    imgs = {
        "b.png": rng.integers(0, 256, (6, 5, 3), dtype=np.uint8),
        "a/z.png": rng.integers(0, 256, (6, 5, 3), dtype=np.uint8),
        "a/c.PNG": rng.integers(0, 256, (6, 5, 3), dtype=np.uint8),
        "a/b/d.png": rng.integers(0, 256, (6, 5, 3), dtype=np.uint8),
    }
    for rel, a in imgs.items():
        _write_png(tmp_path / rel, a)
    (tmp_path / "notes.txt").write_text("not an image")
    order = ["a/b/d.png", "a/c.PNG", "a/z.png", "b.png"]
    assert [q.relative_to(tmp_path).as_posix() for q in list_image_files(tmp_path)] == order
    out = load_samples(tmp_path)
    assert out.shape == (4, 3, 6, 5)
    for i, rel in enumerate(order):
        np.testing.assert_array_equal(out[i], _u8(imgs[rel].transpose(2, 0, 1)))


def test_png_grayscale_and_rgba(tmp_path, rng):
    g = [rng.integers(0, 256, (5, 5), dtype=np.uint8) for _ in range(3)]
    for i, a in enumerate(g):
        _write_png(tmp_path / "gray" / f"{i}.png", a)
    out = load_samples(tmp_path / "gray")
    assert out.shape == (3, 1, 5, 5)
    np.testing.assert_array_equal(out[:, 0], _u8(np.stack(g)))
    rgba = [rng.integers(0, 256, (5, 5, 4), dtype=np.uint8) for _ in range(2)]
    for i, a in enumerate(rgba):
        _write_png(tmp_path / "rgba" / f"{i}.png", a, "RGBA")
    out = load_samples(tmp_path / "rgba")
    assert out.shape == (2, 3, 5, 5)
    np.testing.assert_array_equal(out, _u8(np.stack(rgba)[..., :3].transpose(0, 3, 1, 2)))
    # mixed grayscale + RGB: grayscale replicated to 3 channels
    _write_png(tmp_path / "gray" / "rgb.png", rgba[0][..., :3])
    out = load_samples(tmp_path / "gray")
    assert out.shape == (4, 3, 5, 5)
    np.testing.assert_array_equal(out[0, 0], out[0, 2])


def test_jpeg_folder(tmp_path, rng):
    # JPEG is lossy: compare against PIL's own decoding of the saved files.
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.jpg", quality=90
        )
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "3.JPEG", quality=90)
    out = load_samples(tmp_path)
    names = ["0.jpg", "1.jpg", "2.jpg", "3.JPEG"]
    ref = np.stack([np.asarray(Image.open(tmp_path / n).convert("RGB")) for n in names])
    np.testing.assert_array_equal(out, _u8(ref.transpose(0, 3, 1, 2)))


def test_save_samples_round_trip_and_atomic(tmp_path, img):
    save_samples(tmp_path / "o.npy", img)
    save_samples(tmp_path / "o.npz", img)
    np.testing.assert_array_equal(load_samples(tmp_path / "o.npy"), img)
    np.testing.assert_array_equal(load_samples(tmp_path / "o.npz", key="x"), img)
    assert sorted(os.listdir(tmp_path)) == ["o.npy", "o.npz"]  # no temp files left behind
    with pytest.raises(DiffauditError, match=r"\.npy or \.npz"):
        save_samples(tmp_path / "o.csv", img)


# ------------------------------------------------------------------------------------ bad inputs


class _Payload:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_pt_refused_without_running_payload(tmp_path):
    marker = tmp_path / "PWNED"
    torch.save({"x": torch.zeros(3, 2), "evil": _Payload(str(marker))}, tmp_path / "evil.pt")
    assert not marker.exists()
    with pytest.raises(DiffauditError, match=r"evil\.pt: needs full pickle.*refused.*safetensors"):
        load_samples(tmp_path / "evil.pt")
    assert not marker.exists()


def _bad_inputs(tmp_path: Path, rng) -> list[tuple[Path, str]]:
    cases = []

    def add(name, pattern):
        cases.append((tmp_path / name, pattern))

    add("missing.npy", "no such file")
    (tmp_path / "empty.npy").write_bytes(b"")
    add("empty.npy", "empty")
    (tmp_path / "emptydir").mkdir()
    add("emptydir", "no PNG/JPEG")
    a = rng.normal(size=(4, 3)).astype(np.float32)
    a[2, 1] = np.nan
    np.save(tmp_path / "nan.npy", a)
    add("nan.npy", "1 sample.*NaN or Inf")
    b = rng.normal(size=(4, 3)).astype(np.float32)
    b[0, 0] = np.inf
    b[3, 0] = -np.inf
    np.save(tmp_path / "inf.npy", b)
    add("inf.npy", "2 sample.*NaN or Inf")
    np.save(tmp_path / "oned.npy", np.zeros(5, np.float32))
    add("oned.npy", r"1-D.*\(n, d\)")
    np.save(tmp_path / "fived.npy", np.zeros((2, 1, 3, 4, 4), np.float32))
    add("fived.npy", r"5-D")
    np.save(tmp_path / "one.npy", np.zeros((1, 3), np.float32))
    add("one.npy", "1 sample.*at least 2")
    np.save(tmp_path / "zero.npy", np.zeros((0, 3), np.float32))
    add("zero.npy", "0 sample")
    (tmp_path / "x.csv").write_text("1,2\n3,4\n")
    add("x.csv", "unsupported file type '.csv'")
    (tmp_path / "corrupt.npy").write_bytes(b"\x93NUMPY garbage that is not an array header")
    add("corrupt.npy", "corrupt|not a valid")
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    add("corrupt.npz", "corrupt")
    (tmp_path / "corrupt.pt").write_bytes(b"definitely not a torch file")
    add("corrupt.pt", "corrupt")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json")
    add("corrupt.safetensors", "corrupt")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    add("obj.npy", "pickled")
    torch.save([torch.zeros(2), torch.zeros(2)], tmp_path / "list.pt")
    add("list.pt", "torch.stack")
    np.savez(tmp_path / "none.npz")
    add("none.npz", "holds no array")
    d = tmp_path / "mixed"
    _write_png(d / "a.png", np.zeros((4, 4, 3), np.uint8))
    _write_png(d / "b.png", np.zeros((5, 4, 3), np.uint8))
    add("mixed", r"different sizes.*b\.png is 4x5.*resize")
    d = tmp_path / "brokenimg"
    _write_png(d / "a.png", np.zeros((4, 4, 3), np.uint8))
    (d / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    add("brokenimg", r"cannot decode image .*b\.png")
    d = tmp_path / "oneimg"
    _write_png(d / "a.png", np.zeros((4, 4, 3), np.uint8))
    add("oneimg", "1 sample.*at least 2")
    np.save(tmp_path / "bigint.npy", np.full((2, 3, 4, 4), 1000, np.int64))
    add("bigint.npy", "integer images.*uint8")
    return cases


def test_bad_input_table(tmp_path, rng):
    cases = _bad_inputs(tmp_path, rng)
    assert len(cases) == 21
    for path, pattern in cases:
        with pytest.raises(DiffauditError, match=pattern) as e:
            load_samples(path)
        msg = str(e.value)
        assert msg.startswith(str(path)), msg  # names the input
        assert "\n" not in msg, msg  # one sentence, no traceback


def test_name_overrides_label_and_min_n(tmp_path, vec):
    np.save(tmp_path / "v.npy", vec)
    with pytest.raises(DiffauditError, match=r"^GEN: has 7 sample\(s\), needs at least 10"):
        load_samples(tmp_path / "v.npy", name="GEN", min_n=10)
    assert load_samples(tmp_path / "v.npy", min_n=7).shape == (7, 5)


def test_integer_vectors_cast(tmp_path):
    a = np.arange(12, dtype=np.int64).reshape(4, 3)
    np.save(tmp_path / "i.npy", a)
    out = load_samples(tmp_path / "i.npy")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, a.astype(np.float32))  # vectors are not rescaled


def test_misnamed_files_are_not_called_pickles(tmp_path, vec):
    """Issue 15: numpy reads any file without its header as a pickle; only a real pickle is called one."""
    (tmp_path / "text.npy").write_text("1.0,2.0\n3.0,4.0\n")
    (tmp_path / "text.npz").write_text("1.0 2.0\n3.0 4.0\n")
    (tmp_path / "blob.npy").write_bytes(b"\x00\x01\x02\xff\xfe" * 20)
    (tmp_path / "real.npy").write_bytes(pickle.dumps(vec, protocol=4))
    (tmp_path / "old.npz").write_bytes(pickle.dumps([1, 2], protocol=2))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    expect = {
        "text.npy": r"is not a \.npy file \(no NumPy header; it looks like a text file\).*numpy\.save",
        "text.npz": r"is not a \.npz file \(no NumPy header; it looks like a text file\).*numpy\.savez",
        "blob.npy": r"is not a \.npy file .*unknown binary format",
        "real.npy": r"object \(pickled\) array",
        "old.npz": r"object \(pickled\) array",
        "obj.npy": r"object \(pickled\) array",
    }
    for f, pattern in expect.items():
        with pytest.raises(DiffauditError, match=pattern) as e:
            load_samples(tmp_path / f)
        assert str(e.value).startswith(str(tmp_path / f)) and "\n" not in str(e.value)
        if not f.startswith(("real", "old", "obj")):
            assert "pickle" not in str(e.value)


def test_several_arrays_advise_saving_one_not_a_key_option(tmp_path, vec):
    np.savez(tmp_path / "two.npz", gen=vec, ref=vec[:3])
    torch.save({"gen": torch.from_numpy(vec), "ref": torch.from_numpy(vec[:3])}, tmp_path / "two.pt")
    for f in ("two.npz", "two.pt"):
        with pytest.raises(DiffauditError, match=r"several .*'gen', 'ref'.*save the samples alone") as e:
            load_samples(tmp_path / f)
        assert "--key" not in str(e.value)
        # the other side: the array named explicitly is loaded (compare --gen-key, embed --key)
        np.testing.assert_array_equal(load_samples(tmp_path / f, key="ref"), vec[:3])


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: np.savez(p / "g.npz", a=np.zeros((8, 4)), b=np.ones((8, 4))), "save the samples alone"),
        (lambda p: (p / "g.npy").write_text("0,1\n1,0\n"), "looks like a text file"),
    ],
)
def test_cli_audit_messages_for_misfit_sample_files(tmp_path, make, match):
    make(tmp_path)
    (f,) = [q for q in tmp_path.iterdir() if q.name.startswith("g.")]
    out = tmp_path / "out"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffaudit",
            "audit",
            "--model",
            f"samples:{f}",
            "--dataset",
            "hidden-manifold:d=4,D=2",
            "--n-train",
            "50",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0]
    assert "--key" not in r.stderr and "pickled" not in r.stderr and not out.exists()


def test_vectors_far_from_zero_are_refused_with_the_fix(tmp_path):
    """float64 vectors at 1e4 with spread 1e-4 lose all of it in the float32 cast: refused with the fix (centre
    them); the same vectors centred, float32 ones, and ordinary offsets (~ the spread) load as before."""
    from diffaudit.datasets.loading import load_samples

    rng = np.random.default_rng(0)
    far = 1e4 + 1e-4 * rng.standard_normal((200, 5))
    np.save(tmp_path / "far.npy", far)
    with pytest.raises(
        DiffauditError, match="far from 0 relative to how much they differ.*subtract one common mean"
    ):
        load_samples(tmp_path / "far.npy")
    np.save(tmp_path / "centred.npy", far - far.mean(0))
    np.save(tmp_path / "ordinary.npy", 5.0 + rng.standard_normal((200, 5)))
    np.save(tmp_path / "f32.npy", far.astype(np.float32))  # already float32: nothing is lost by the loader
    for f in ("centred", "ordinary", "f32"):
        assert load_samples(tmp_path / f"{f}.npy").shape == (200, 5)
    # the boundary: spread 2^-b of an offset of 1 keeps about 24 - b bits
    for b, refused in ((6, False), (12, True)):
        np.save(tmp_path / "b.npy", 1.0 + 2.0**-b * rng.standard_normal((300, 3)))
        if refused:
            with pytest.raises(DiffauditError, match="keeps only"):
                load_samples(tmp_path / "b.npy")
        else:
            load_samples(tmp_path / "b.npy")
