"""The Python API example of docs/cl.md runs as written (configure, run, read the results)."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "cl.md"


def api_example() -> str:
    """The Python block between the ``api-example`` markers of docs/cl.md."""
    text = DOC.read_text()
    found = re.search(r"<!-- api-example -->\s*```python\n(.*?)```\s*<!-- /api-example -->",
                      text, re.S)
    assert found, "docs/cl.md lost its api-example block"
    return found.group(1)


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_docs_api_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = api_example()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(DOC), "exec"), {"__name__": "__docs__"})  # noqa: S102
    metrics = json.loads((tmp_path / "runs/api-example/metrics.json").read_text())
    printed = out.getvalue().splitlines()
    assert printed[0] == (f"FA {metrics['FA']:.2f}  CA {metrics['CA']:.2f}  "
                          f"FM {metrics['FM']:.2f}")
    assert metrics["dataset"] == "synthetic" and metrics["num_tasks"] == 3
    assert metrics["seed"] == 1 and metrics["method"] == "norga"
