"""Prompt files: plain text and JSONL, with optional training images and memorization labels."""

import json

import pytest

from diffaudit.datasets.prompts import PromptSet, load_prompts
from diffaudit.errors import DiffauditError


def _one_sentence(msg: str) -> bool:
    return msg.endswith(".") and ". " not in msg.rstrip(".")


def test_plain_text_one_prompt_per_line(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("\ufeffa photo of a cat\n\n   \n  a red dog  \r\nmountains at dawn", encoding="utf-8")
    ps = load_prompts(f)
    assert isinstance(ps, PromptSet) and len(ps) == 3
    assert ps.prompts == ["a photo of a cat", "a red dog", "mountains at dawn"]
    assert ps.images == [None] * 3 and ps.memorized == [None] * 3 and ps.path == str(f)


def test_jsonl_with_images_and_labels(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "0.png").write_bytes(b"")
    absolute = tmp_path / "abs.png"
    absolute.write_bytes(b"")
    rows = [
        {"prompt": "a cat", "image": "train/0.png", "memorized": True, "id": 7},
        {"prompt": "a dog", "memorized": False},
        {"prompt": "a tree", "image": str(absolute), "memorized": None},
    ]
    f = tmp_path / "sub" / "p.jsonl"
    f.parent.mkdir()
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    with pytest.raises(DiffauditError, match=r"line 1: \"image\" .* does not exist"):
        load_prompts(f)  # relative to the file's folder (sub/), not the working directory
    rows[0]["image"] = "../train/0.png"
    f.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    ps = load_prompts(f)
    assert ps.prompts == ["a cat", "a dog", "a tree"]
    assert ps.memorized == [True, False, None]
    assert ps.images[0] == str(f.parent / "../train/0.png") and ps.images[1] is None
    assert ps.images[2] == str(absolute)


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("p.txt", b"", "holds no prompts"),
        ("p.txt", b"\n  \n\n", "holds no prompts"),
        ("p.jsonl", b"\n", "holds no prompts"),
        ("p.txt", b"a cat\nna\xefve caf\xe9\n", "line 2: not UTF-8"),
        ("p.txt", b'{"prompt": "a cat"}\n', "line 1: holds a JSON object.*name the file .jsonl"),
        ("p.jsonl", b'{"prompt": "a cat"}\n{"prompt": \n', "line 2: not valid JSON"),
        ("p.jsonl", b'{"prompt": "a cat"}\n\n["a dog"]\n', "line 3: holds a JSON list, not an object"),
        ("p.jsonl", b'{"text": "a cat"}\n', 'line 1: has no "prompt" key'),
        ("p.jsonl", b'{"prompt": 3}\n', '"prompt" must be a non-empty string'),
        ("p.jsonl", b'{"prompt": "  "}\n', '"prompt" must be a non-empty string'),
        ("p.jsonl", b'{"prompt": "a cat", "memorized": 1}\n', '"memorized" must be true or false'),
        ("p.jsonl", b'{"prompt": "a cat", "memorized": "yes"}\n', '"memorized" must be true or false'),
        ("p.jsonl", b'{"prompt": "a cat", "image": 5}\n', '"image" must be a path string'),
        ("p.jsonl", b'{"prompt": "a cat", "image": "nope.png"}\n', r'"image" .*nope.png does not exist'),
    ],
)
def test_bad_files_are_one_sentence_errors(tmp_path, name, content, match):
    f = tmp_path / name
    f.write_bytes(content)
    with pytest.raises(DiffauditError, match=match) as e:
        load_prompts(f)
    assert str(f) in str(e.value) and _one_sentence(str(e.value))


def test_missing_file(tmp_path):
    for path in (tmp_path / "nope.txt", tmp_path):
        with pytest.raises(DiffauditError, match="no such file"):
            load_prompts(path)
