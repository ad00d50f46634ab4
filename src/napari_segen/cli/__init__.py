"""The ``napari-segen`` command line: thin subcommands over the core.

Each subcommand module exposes ``add_parser(subparsers)``; errors a user can fix
are printed as one line and give a non-zero exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from ._common import UserError

_SUBCOMMANDS = ("predict", "train", "evaluate", "metrics", "synth", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-segen",
        description="Segment images, retrain on corrections, synthesize training pairs "
        "(pix2pix) and score image quality, from the command line.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import importlib

    for name in _SUBCOMMANDS:
        try:
            module = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name and err.name.endswith(f"cli.{name}"):
                continue  # a subcommand not built yet
            raise
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``napari-segen``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="napari-segen: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("napari-segen: interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        if args.debug:
            raise
        print(f"napari-segen {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
