"""Atomic writes: a file or a directory appears complete under its final name, or not at all; tables as CSV that
read back exactly (`write_table` / `read_table`)."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """UTF-8; a lone surrogate (not encodable: it can come out of a model's text) is written as U+FFFD."""
    atomic_write_bytes(path, valid_unicode(text).encode("utf-8"))


def valid_unicode(text: str) -> str:
    """`text` with lone surrogates replaced by U+FFFD (paired ones are joined into their character)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def table_csv(df: Any) -> str:
    """`df` as CSV text that `pandas.read_csv` splits into the same rows and columns, whatever the text holds.

    Every string is quoted (a bare `\r`, `\n`, quote, comma or NUL inside a token stays inside its field; pandas'
    default quotes only the line terminator `\n`, so a token with `\r` shifted rows), numbers are written
    unquoted with full precision (they read back bit for bit), `\n` ends a line, lone surrogates become U+FFFD.
    Read back with `read_table`: plain `pandas.read_csv` also reads it, except that it turns the strings "nan",
    "NA", "null", "None"... into NaN. One thing CSV cannot tell apart: an empty string and a missing value (both
    read back as NaN).
    """
    import pandas as pd

    df = pd.DataFrame(df)
    for c in df.columns:
        if df[c].dtype == object or pd.api.types.is_string_dtype(df[c].dtype):
            df[c] = df[c].map(lambda v: valid_unicode(v) if isinstance(v, str) else v).astype(object)
    return df.to_csv(index=False, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)


def write_table(path: str | Path, df: Any) -> None:
    """Write a DataFrame atomically as CSV (see `table_csv`)."""
    atomic_write_text(path, table_csv(df))


def read_table(source: str | Path | bytes) -> Any:
    """Read a table written by `write_table` exactly: strings as written (a token "nan" or "NA" stays a string),
    empty fields as NaN, numbers bit for bit. `source`: a path or the CSV's bytes."""
    import pandas as pd

    buf = io.BytesIO(source) if isinstance(source, bytes) else source
    return pd.read_csv(buf, keep_default_na=False, na_values=[""], encoding="utf-8")


def ensure_writable_dir(path: str | Path) -> None:
    """Create `path` if needed and prove it writable; a `UserError` naming it otherwise."""
    from rlhf_interp.errors import UserError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"output {path} is a file; pass a directory with --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"output directory {path} is not writable ({e.strerror}); pass another --out") from e


def recover_dir(path: str | Path) -> None:
    """Finish an interrupted `atomic_dir` swap: if `path` is missing but a moved-aside old copy exists, restore it;
    drop leftovers of interrupted writes."""
    path = Path(path)
    olds = sorted(path.parent.glob(f".{path.name}.old-*"))
    if not path.exists():
        for old in olds:
            if (old / "x").is_dir():
                os.replace(old / "x", path)
                break
    for leftover in olds + list(path.parent.glob(f".{path.name}.tmp-*")):
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; on success it replaces `path` (the old one is removed last).

    A kill at any moment leaves either the previous directory or the new one under `path`, plus at most a stale
    `.name.tmp-*` / `.name.old-*` sibling that the next call cleans up.
    """
    from rlhf_interp.faults import maybe_die

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        _relax_permissions(tmp)
        maybe_die(f"write-{path.name}")  # tests: killed with the new copy half made
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / "x")  # move the old directory aside (one rename) ...
            maybe_die(f"swap-{path.name}")  # tests: killed between the two renames (recover_dir restores)
            os.replace(tmp, path)  # ... and the new one into place (one rename)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _relax_permissions(root: Path) -> None:
    """mkdtemp creates 0700 directories: give the result the permissions a plain mkdir/open would (umask)."""
    umask = _umask()
    os.chmod(root, 0o777 & ~umask)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(Path(dirpath) / d, 0o777 & ~umask)
        for f in filenames:
            os.chmod(Path(dirpath) / f, 0o666 & ~umask)
