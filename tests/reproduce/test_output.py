"""The shared writer of the reproduce targets: one file per named output, by suffix, written atomically."""

from __future__ import annotations

import json

import pytest

from iobs.reproduce.output import subplots, write


def test_write_stores_json_markdown_figures_and_drawn_plots(tmp_path):
    fig, ax = subplots(1, 1, figsize=(3, 2))
    ax.plot([0, 1], [1, 0])
    drawn = []

    def draw(path):
        drawn.append(path)
        path.write_bytes(b"\x89PNG drawn")

    files = {"a.json": {"x": [1, 2.5], "y": None}, "t.md": "# title\n", "f.png": fig, "sub/h.png": draw}
    paths = write(tmp_path / "out", files)
    out = tmp_path / "out"
    assert paths == [out / name for name in files]
    assert json.loads((out / "a.json").read_text()) == {"x": [1, 2.5], "y": None}
    assert (out / "t.md").read_text() == "# title\n"
    assert (out / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert drawn == [out / "sub" / "h.png"] and (out / "sub" / "h.png").exists()
    import matplotlib.pyplot as plt

    assert not plt.fignum_exists(fig.number)  # the writer closed the figure
    assert not [p for p in out.rglob(".*")]  # no temporary file left behind


def test_write_rejects_an_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"'x.csv': the name must end in .json, .md or .png"):
        write(tmp_path, {"x.csv": "a,b"})
