"""The tutorial's code blocks run, in order, in one namespace (so the docs stay true)."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_tutorial_code_blocks_run(tmp_path, monkeypatch):
    text = (DOCS / "tutorial.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 8
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__tutorial__"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"tutorial.md block {i + 1}", "exec"), namespace)  # noqa: S102
    assert (tmp_path / "irmas.h5").exists() and (tmp_path / "mel.png").exists()
    assert namespace["small"].out_of_core is True
