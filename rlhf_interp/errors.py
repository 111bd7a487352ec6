"""The one exception type that the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a message that names the offending thing and what to do about it.

    The CLI prints `error: <message>` on one line and exits with code 2 (no traceback unless `--debug`).
    """


class NotSupported(RuntimeError):
    """An analysis that cannot run on this model (an architecture without a checkpoint layout, weights that are not
    safetensors): `compare(strict=False)`, as the CLI runs it, records the message under summary.json["failed"]
    and runs the other analyses; strict=True raises it."""
