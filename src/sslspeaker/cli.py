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
    add_common_options(p, False)
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f".commands.{name}", __package__).add_parser(sub)
    for sub_parser in sub.choices.values():
        add_common_options(sub_parser, argparse.SUPPRESS)
        for action in sub_parser._actions:
            if action.dest in ("verbose", "quiet"):
                action.default = argparse.SUPPRESS
    return p


def add_common_options(p: argparse.ArgumentParser, default) -> None:
    """``-v/--verbose`` and ``--quiet``, before or after the sub-command (a sub-command's own ``--quiet``,
    which also turns off its progress bars, is kept). After the sub-command they default to
    ``SUPPRESS`` (a sub-command's own ``--quiet`` too), so they never undo the same option given before it."""
    if "--verbose" not in p._option_string_actions:
        p.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logging")
    if "--quiet" not in p._option_string_actions:
        p.add_argument("--quiet", action="store_true", default=default, help="warnings and errors only")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(message)s")
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """Run the sub-command; a user's error becomes one line on stderr and exit code 2 (see ``errors``)."""
    from .data.audio import AudioError
    from .errors import MissingExtraError, Stopped, missing_extra

    try:
        try:
            return int(args.func(args) or 0)
        except ImportError as exc:  # a module of an optional extra: one line naming the extra
            extra = missing_extra(exc) if not isinstance(exc, MissingExtraError) else None
            if extra is None:
                raise
            raise extra from exc
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
