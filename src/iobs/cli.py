"""Command-line entry point: thin dispatch to ``iobs.commands.*`` modules (parse, call, print)."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module in iobs.commands; each module defines add_arguments(parser) and run(args) -> int
COMMANDS = {
    "reproduce": (
        "iobs.commands.reproduce",
        "reproduce the paper's figures and tables, scaled to this machine",
    ),
    "prune": ("iobs.commands.prune", "prune a model (one-shot or I-OBS) and save the sparse checkpoint"),
    "eval": ("iobs.commands.evaluate", "evaluate a dense or pruned model"),
    "demo": (
        "iobs.commands.demo",
        "prune the packaged SmolLM2 model with every method and print the comparison",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    import iobs

    parser = argparse.ArgumentParser(
        prog="iobs", description="Iterative Optimal Brain Surgeon: sparse recovery and pruning"
    )
    parser.add_argument("--version", action="version", version=f"iobs {iobs.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (modname, help_) in COMMANDS.items():
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name == modname:  # command not built yet
                continue
            raise
        p = sub.add_parser(name, help=help_, description=help_)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as e:
        print(f"iobs {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished work is saved and a rerun resumes from it", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
