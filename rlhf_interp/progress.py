"""A rich progress bar on stderr shared by the long-running commands (library code never prints)."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(disable: bool | None = None) -> Progress:
    """A progress bar with a free-text field `info` (loss, reward, KL ...); off when RLHF_INTERP_QUIET=1."""
    if disable is None:
        disable = os.environ.get("RLHF_INTERP_QUIET", "") not in ("", "0")
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=Console(file=sys.stderr),
        disable=disable,
    )
