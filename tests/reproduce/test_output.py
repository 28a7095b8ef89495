"""The shared writer of the reproduce targets: one file per named output, by suffix, written atomically."""

from __future__ import annotations

import json

import pytest

from iobs.reproduce.output import write
from iobs.utils import subplots


def test_write_stores_json_markdown_and_figures(tmp_path):
    fig, ax = subplots(1, 1, figsize=(3, 2))
    ax.plot([0, 1], [1, 0])
    fig2, _ = subplots(1, 1, figsize=(2, 2))
    files = {"a.json": {"x": [1, 2.5], "y": None}, "t.md": "# title\n", "f.png": fig, "sub/h.png": fig2}
    paths = write(tmp_path / "out", files)
    out = tmp_path / "out"
    assert paths == [out / name for name in files]
    assert json.loads((out / "a.json").read_text()) == {"x": [1, 2.5], "y": None}
    assert (out / "t.md").read_text() == "# title\n"
    assert (out / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "sub" / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.pyplot as plt

    assert not plt.fignum_exists(fig.number) and not plt.fignum_exists(fig2.number)  # the writer closed them
    assert not [p for p in out.rglob(".*")]  # no temporary file left behind


def test_write_rejects_an_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"'x.csv': the name must end in .json, .md or .png"):
        write(tmp_path, {"x.csv": "a,b"})
