"""The README's Python example runs offline as written, and its comments tell the truth."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

README = Path(__file__).parents[1] / "README.md"


def test_the_python_example_runs_as_written(tmp_path, monkeypatch, forward_calls):
    text = README.read_text()
    block = re.search(r"## Python\n\n```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - our own README
    assert [i.name for i in scope["model"].layers("blocks")][:1] == ["layer1.0"]
    assert scope["x"].shape == (16, 512) and scope["x"].dtype == np.float16
    assert scope["cka"].array.shape == (8, 12)
    # the comparison read the store the extraction wrote: only the extraction ran models
    assert sum(forward_calls) == 2 * 16
