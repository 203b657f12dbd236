"""The ``segany`` command line: builds the parser from the command modules, runs the chosen
command and turns its errors into exit codes.

Each command lives in its own module (``segment_cmd``, ``auto_cmd``, ...) whose ``register``
adds its parser; what they share is in :mod:`segany.cli.common`.

Exit codes (stable, for scripts):

====  ==========================================================================
0     success
1     unexpected error (a bug, or an environment problem such as a full disk)
2     bad usage or bad input: argparse errors, invalid prompts, unreadable or
      missing image / embedding file, invalid device, bad dataset or config
3     model not available: checkpoint missing, unreadable or not a SAM model,
      official checkpoint could not be downloaded
4     ``segany auto``: some images could not be read (the others are done)
130   interrupted (Ctrl-C)
====  ==========================================================================

Errors are printed as ``segany: error: <message>`` on stderr, without a traceback unless the
environment variable ``SEGANY_DEBUG=1`` is set. Status lines (model loading, encoding) go to
stderr; results (one line per mask, written paths) go to stdout.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import NoReturn

from .. import __version__, hub
from ..checkpoint import CheckpointError
from . import (
    auto_cmd,
    bench_precision_cmd,
    demo_cmd,
    download_cmd,
    embed_cmd,
    engine_cmd,
    eval_cmd,
    export_cmd,
    info_cmd,
    project_cmd,
    segment_cmd,
    serve_cmd,
    train_cmd,
    train_text_encoder_cmd,
    zeroshot_cmd,
)
from .common import (
    DEFAULT_MODEL,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_MODEL,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
)

__all__ = ["DEFAULT_MODEL", "build_parser", "main"]

#: The commands, in the order ``segany --help`` lists them.
COMMANDS = (
    segment_cmd,
    embed_cmd,
    download_cmd,
    info_cmd,
    demo_cmd,
    auto_cmd,
    eval_cmd,
    bench_precision_cmd,
    export_cmd,
    train_cmd,
    train_text_encoder_cmd,
    project_cmd,
    serve_cmd,
    engine_cmd,
    zeroshot_cmd,
)


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors read ``segany: error: ...`` and exit with code 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"segany: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``segany`` argument parser (with its subcommand parsers)."""
    parser = _Parser(
        prog="segany",
        description="Segment Anything (SAM): segment objects in images from points and boxes.",
        epilog=(
            "exit codes: 0 success, 1 unexpected error, 2 bad usage or input, "
            "3 model not available. Set SEGANY_DEBUG=1 for tracebacks."
        ),
    )
    parser.add_argument(
        "--version", action="version", version=f"segany {__version__}", help="print the version"
    )
    sub = parser.add_subparsers(
        dest="command",
        metavar="COMMAND",
        title="commands",
        help="run 'segany COMMAND --help' for its options",
    )
    for command in COMMANDS:
        command.register(sub)
    return parser


def _classify(exc: BaseException) -> tuple[int, str]:
    """Exit code and message for an exception escaping a command. Bad input is a UsageError
    raised where the command calls the library; any other exception is a bug (exit code 1)."""
    if isinstance(exc, CliError):
        return exc.exit_code, str(exc)
    if isinstance(exc, (hub.DownloadError, CheckpointError)):
        return EXIT_MODEL, str(exc)
    text = str(exc)
    return EXIT_ERROR, f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _debug() -> bool:
    return os.environ.get("SEGANY_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    """Run the ``segany`` command line with ``argv`` (default ``sys.argv[1:]``).

    Returns the exit code (see the module docstring) instead of exiting, so that it can be
    called in-process; the console script passes it to ``sys.exit``.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors
        if e.code is None:
            return EXIT_OK
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        print("segany: error: a command is required", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("segany: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        code, message = _classify(exc)
        if _debug():
            traceback.print_exc()
        elif code == EXIT_ERROR:
            message += " (set SEGANY_DEBUG=1 to see the traceback)"
        print(f"segany: error: {message}", file=sys.stderr)
        return code
