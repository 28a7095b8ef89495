"""``iobs reproduce TARGET``: each target is a module in ``iobs.reproduce`` with add_arguments/run."""

from __future__ import annotations

import importlib

# target -> module; each defines add_arguments(parser) and run(args)
TARGETS = {
    "figure1": "iobs.reproduce.figure1",
    "table1": "iobs.reproduce.table1",
    "table2": "iobs.reproduce.table2",
    "figure2": "iobs.reproduce.figure2",
    "table5": "iobs.reproduce.table5",
    "convergence": "iobs.reproduce.convergence",
}


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    for name, modname in TARGETS.items():
        mod = importlib.import_module(modname)
        summary = (mod.__doc__ or "").strip().splitlines()[0].replace("%", "%%") if mod.__doc__ else None
        p = sub.add_parser(name, help=summary, description=summary)
        mod.add_arguments(p)
        p.set_defaults(_target_run=mod.run)


def run(args) -> int:
    return int(args._target_run(args) or 0)
