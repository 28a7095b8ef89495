"""The one writer of the reproduce targets: a render's named outputs → files in the output folder.

A target's ``render`` returns ``{file name: content}``; :func:`write` stores each atomically by its
suffix: ``.md`` text, ``.json`` JSON, ``.png`` a matplotlib figure (saved at 110 dpi, then closed) or a
function ``draw(path)`` for a plot drawn by code that writes its own file.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

from iobs.utils import atomic_write_bytes, atomic_write_json, atomic_write_text, environment

DPI = 110


def subplots(*args, **kwargs):
    """``plt.subplots`` on the file-only Agg backend: ``(figure, axes)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def write(out: str | Path, files: dict[str, object], bbox: str | None = None) -> list[Path]:
    """Write every ``{name: content}`` into ``out`` (created); ``bbox`` is savefig's ``bbox_inches``."""
    out = Path(out)
    written = []
    for name, content in files.items():
        path = out / name
        if name.endswith(".json"):
            atomic_write_json(path, content)
        elif name.endswith(".md"):
            atomic_write_text(path, content)
        elif name.endswith(".png") and callable(content):
            path.parent.mkdir(parents=True, exist_ok=True)
            content(path)
        elif name.endswith(".png"):
            import matplotlib.pyplot as plt

            buf = io.BytesIO()
            content.savefig(buf, format="png", dpi=DPI, bbox_inches=bbox)
            plt.close(content)
            atomic_write_bytes(path, buf.getvalue())
        else:
            raise ValueError(f"output {name!r}: the name must end in .json, .md or .png")
        written.append(path)
    return written


def run_target(cfg, experiment, render, out: str | Path | None = None, bbox: str | None = None) -> dict:
    """The command of every target: ``render(experiment(cfg), cfg, seconds, environment())`` written into
    ``out`` (default ``cfg.out``); returns the rendered files."""
    t0 = time.perf_counter()
    records = experiment(cfg)
    files = render(records, cfg, time.perf_counter() - t0, environment())
    write(cfg.out if out is None else out, files, bbox)
    return files


def history_plot(loop: dict, metrics: list[str], title: str) -> Callable[[Path], object]:
    """The per-iteration plot of an I-OBS loop record (``LoopResult.to_dict()``), drawn at write time."""

    def draw(path: Path):
        from iobs.loop import LoopResult, plot_history

        result = LoopResult(history=loop["history"], best=loop["best_iteration"], select=loop["select"])
        return plot_history(result, path, metrics=metrics, title=title)

    return draw
