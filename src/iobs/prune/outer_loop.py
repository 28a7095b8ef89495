"""Compatibility for iobs.vision.iobs_global and iobs.reproduce.table1/table2 until the merge: the loop
lives in :mod:`iobs.loop`, whose ``project`` callback is also told the iteration number."""

from __future__ import annotations

from iobs import loop
from iobs.loop import LoopResult, plot_history

__all__ = ["LoopResult", "plot_history", "run_iobs"]


def run_iobs(model, *, project, **kwargs) -> LoopResult:
    """:func:`iobs.loop.run_iobs` with a ``project(model, batch)`` that is not told the iteration."""
    return loop.run_iobs(model, project=lambda m, batch, t: project(m, batch), **kwargs)
