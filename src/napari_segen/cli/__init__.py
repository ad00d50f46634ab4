"""The ``napari-segen`` command line: thin subcommands over the core.

Each subcommand module exposes ``add_parser(subparsers)``; errors a user can fix
are printed as one line and give a non-zero exit code.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from collections.abc import Sequence

from safetensors import SafetensorError

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
    except (UserError, ValueError, OSError, SafetensorError, RuntimeError) as err:
        # what a user can fix: bad input, and the machine's refusals (permissions,
        # read-only or full disks...); anything else is a bug and keeps its traceback
        if args.debug:
            raise
        command = " ".join(filter(None, (args.command, getattr(args, "synth_command", None))))
        print(f"napari-segen {command}: error: {error_message(err)}", file=sys.stderr)
        return 2


class SkippedInputs:
    """The inputs a batch command could not process: each is reported when it fails,
    the batch goes on with the others, and the end lists them with exit code 1."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.paths: list[str] = []

    def skip(self, path, err: BaseException) -> None:
        """Report ``path`` as skipped because of ``err`` (one line on stderr)."""
        self.paths.append(str(path))
        print(f"napari-segen {self.command}: skipped {path}: {error_message(err)}", file=sys.stderr)

    def exit_code(self, total: int) -> int:
        """0 when nothing was skipped; else 1, after one line listing what was (when the
        batch had more than one input)."""
        if not self.paths:
            return 0
        if total <= 1:
            return 1
        shown = ", ".join(self.paths[:10]) + (" ..." if len(self.paths) > 10 else "")
        print(
            f"napari-segen {self.command}: {len(self.paths)} of {total} input(s) failed and were "
            f"skipped: {shown}; the others were processed",
            file=sys.stderr,
        )
        return 1


#: What to do about an OS error, by errno.
_OS_ADVICE = {
    errno.EACCES: "check its permissions, or choose another place",
    errno.EPERM: "check its permissions, or choose another place",
    errno.EROFS: "the disk is read-only: choose a place on a writable disk",
    errno.ENOSPC: "the disk is full: free some space, or choose another disk",
    errno.EDQUOT: "the disk quota is used up: free some space, or choose another disk",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "give a file, not a folder",
    errno.ENAMETOOLONG: "choose a shorter name",
}


def error_message(err: BaseException) -> str:
    """One line for the user: the error's own sentence, or for an OS error its path,
    what the system said, and what to do."""
    if isinstance(err, OSError) and err.errno is not None:
        where = f"{err.filename}: " if err.filename is not None else ""
        advice = _OS_ADVICE.get(err.errno)
        return f"{where}{err.strerror or err}" + (f"; {advice}" if advice else "")
    text = str(err).strip() or type(err).__name__
    return " ".join(text.split())  # one line, whatever the message held


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
