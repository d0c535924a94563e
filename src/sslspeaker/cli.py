"""The ``sslspeaker`` command: one sub-command per pipeline job (see ``sslspeaker.commands``)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="sslspeaker", description="Self-supervised speaker embeddings and verification.")
    p.add_argument("--version", action="version", version=f"sslspeaker {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f".commands.{name}", __package__).add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """Run the sub-command; a user's error becomes one line on stderr and exit code 2 (see ``errors``)."""
    from .data.audio import AudioError
    from .errors import MissingExtraError, Stopped

    try:
        return int(args.func(args) or 0)
    except Stopped as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return 3
    except (ValueError, OSError, AudioError, MissingExtraError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` as one line; an ``OSError`` without its own text names its file."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
