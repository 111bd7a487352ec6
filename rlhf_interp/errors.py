"""The one exception type that the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a message that names the offending thing and what to do about it.

    The CLI prints `error: <message>` on one line and exits with code 2 (no traceback unless `--debug`).
    """
