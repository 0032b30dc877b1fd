"""Prompt files for text-to-image audits: the prompts to generate from and, optionally, each prompt's training
image and whether it is known to be memorized (the labels a memorization detector's AUC is measured against).

Two formats, chosen by extension:

- ``.jsonl`` / ``.ndjson``: one JSON object per line, ``{"prompt": "...", "image": "train/0001.png",
  "memorized": true}``. ``prompt`` (a non-empty string) is required; ``image`` (a path, relative to the
  file's folder unless absolute) and ``memorized`` (true/false) are optional, null meaning not given; other
  keys are ignored (ids, URLs, ...).
- anything else: plain text, one prompt per line, surrounding whitespace stripped.

Blank lines are skipped in both; a UTF-8 byte-order mark is accepted. Every bad input raises
``DiffauditError`` with one sentence naming the file (and line) and the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from diffaudit.errors import DiffauditError

JSONL_SUFFIXES = (".jsonl", ".ndjson")


@dataclass(frozen=True)
class PromptSet:
    """The prompts of one file, in file order, with their optional training images and labels."""

    path: str  # the file they were read from
    prompts: list[str]
    images: list[str | None]  # training image per prompt (the file's folder joined with the given path)
    memorized: list[bool | None]  # known label per prompt (True: the model reproduces its training image)

    def __len__(self) -> int:
        return len(self.prompts)


def load_prompts(path) -> PromptSet:
    """Read a prompts file (module docstring) into a ``PromptSet``; a bad file is a ``DiffauditError``."""
    path = Path(path).expanduser()
    name = f"prompts file {path}"
    if not path.is_file():
        raise DiffauditError(
            f"{name}: no such file; pass a .txt file (one prompt per line) or a .jsonl file."
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DiffauditError(f"{name}, line {line}: not UTF-8 text; save the file as UTF-8.") from None
    lines = [(i, s) for i, s in enumerate(text.splitlines(), start=1) if s.strip()]
    if path.suffix.lower() in JSONL_SUFFIXES:
        rows = [_jsonl_row(s, f"{name}, line {i}", path.parent) for i, s in lines]
    else:
        if lines and _looks_like_jsonl(lines[0][1]):
            raise DiffauditError(
                f"{name}, line {lines[0][0]}: holds a JSON object, not a prompt; name the file .jsonl to read "
                "it as JSON lines."
            )
        rows = [(s.strip(), None, None) for _, s in lines]
    if not rows:
        raise DiffauditError(
            f'{name} holds no prompts; write one prompt per line (or one JSON object with a "prompt" per line '
            "in a .jsonl file)."
        )
    prompts, images, memorized = (list(col) for col in zip(*rows, strict=True))
    return PromptSet(path=str(path), prompts=prompts, images=images, memorized=memorized)


def _looks_like_jsonl(line: str) -> bool:
    try:
        obj = json.loads(line)
    except ValueError:
        return False
    return isinstance(obj, dict) and "prompt" in obj


def _jsonl_row(line: str, where: str, base: Path) -> tuple[str, str | None, bool | None]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DiffauditError(
            f"{where}: not valid JSON ({e.msg} at column {e.colno}); write one JSON object per line."
        ) from None
    if not isinstance(obj, dict):
        raise DiffauditError(
            f'{where}: holds a JSON {type(obj).__name__}, not an object; write {{"prompt": "..."}} per line.'
        )
    if "prompt" not in obj:
        raise DiffauditError(f'{where}: has no "prompt" key; give every line {{"prompt": "..."}}.')
    prompt = obj["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise DiffauditError(f'{where}: "prompt" must be a non-empty string, got {json.dumps(prompt)}.')
    memorized = obj.get("memorized")
    if memorized is not None and not isinstance(memorized, bool):
        raise DiffauditError(
            f'{where}: "memorized" must be true or false (or null), got {json.dumps(memorized)}.'
        )
    image = obj.get("image")
    if image is not None:
        if not isinstance(image, str) or not image.strip():
            raise DiffauditError(
                f'{where}: "image" must be a path string (or null), got {json.dumps(image)}.'
            )
        file = base / Path(image).expanduser()
        if not file.is_file():
            raise DiffauditError(
                f'{where}: "image" {file} does not exist; give a path relative to the prompts file\'s folder.'
            )
        image = str(file)
    return prompt.strip(), image, memorized
