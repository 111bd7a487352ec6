"""`python:module:function`: a user function `list[str] -> list[float]`, imported by name."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rlhf_interp.errors import UserError


def import_reward(target: str) -> Callable[[list[str]], Sequence[float]]:
    """Import `module:function` (the current directory is on the path, as for `python -m`)."""
    module_name, _, func_name = target.rpartition(":")
    if not module_name or not func_name:
        raise UserError(f"reward 'python:{target}': expected python:module:function")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or anything the module raises at import time
        raise UserError(f"reward 'python:{target}': cannot import module {module_name!r} ({type(e).__name__}: {e})") \
            from e
    func = getattr(module, func_name, None)
    if not callable(func):
        raise UserError(f"reward 'python:{target}': module {module_name!r} has no function {func_name!r}")
    return func
