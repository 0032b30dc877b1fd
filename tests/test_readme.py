"""Every Python snippet of the README runs as written (the documentation cannot drift from the API)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_python_snippets():
    assert len(SNIPPETS) >= 3


@pytest.mark.parametrize("i", range(len(SNIPPETS)))
def test_readme_snippet_runs(i, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # snippets that write reports write them here
    exec(compile(SNIPPETS[i], f"README.md python snippet {i}", "exec"), {"__name__": f"readme_{i}"})
    out = capsys.readouterr().out
    if "print(report.verdict)" in SNIPPETS[i]:
        # the comment in the README states the verdicts: they must be what the code prints
        stated = re.search(r"print\(report\.verdict\)\s*#\s*(\{.*\})", SNIPPETS[i]).group(1)
        assert stated in out, out
