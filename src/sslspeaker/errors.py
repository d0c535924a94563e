"""Exceptions the ``sslspeaker`` command turns into one line and an exit code (see ``cli.main``).

A command raises; it never prints its own error. Anything that is a ``ValueError`` (config,
model, demo errors subclass it), a missing or unwritable file, or unreadable audio becomes
``error: MESSAGE`` and exit code 2; a ``Stopped`` run becomes ``stopped: MESSAGE`` and exit code 3.
"""


class Stopped(RuntimeError):
    """A long job ended early for a stated reason (diverged, no data left); its state is kept."""


class MissingExtraError(ImportError):
    """A feature needs an optional extra that is not installed: the message names it."""
