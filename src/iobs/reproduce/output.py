"""The one writer of the reproduce targets: a render's named outputs → files in the output folder.

A target's ``render`` returns ``{file name: content}``; :func:`write` stores each atomically by its
suffix: ``.md`` text, ``.json`` JSON, ``.png`` a matplotlib figure (saved at 110 dpi, then closed).
"""

from __future__ import annotations

import time
from pathlib import Path

from iobs.utils import atomic_write_json, atomic_write_text, environment, save_figure

DPI = 110


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
        elif name.endswith(".png"):
            save_figure(content, path, DPI, bbox)
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


def history_plot(loop: dict, metrics: list[str], title: str):
    """The per-iteration figure of an I-OBS loop record (``LoopResult.to_dict()``; its ``control``, when
    present, drawn beside it)."""
    from iobs.loop import LoopResult, history_figure

    def result(d: dict) -> LoopResult:
        return LoopResult(history=d["history"], best=d["best_iteration"], select=d["select"])

    control = result(loop["control"]) if "control" in loop else None
    return history_figure(result(loop), metrics=metrics, title=title, control=control)
