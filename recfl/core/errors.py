"""User-facing errors: the CLI prints them as one line and exits non-zero."""

from __future__ import annotations

import shutil
from pathlib import Path


class RecflError(Exception):
    """A mistake the user can fix (bad path, bad file, bad option); no traceback."""

    exit_code = 2


class EnvironmentFault(RecflError):
    """The machine, not the user, stops the work (disk full, permission denied, a broker refusing writes)."""

    exit_code = 1


def os_error_line(exc: OSError) -> str:
    """An operating-system error as one line: its reason and file; a failed tree copy (``shutil.Error``, a list of
    per-file failures) by its first failure and how many more."""
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
        failures = exc.args[0]
        source, target, why = failures[0]
        more = f" (and {len(failures) - 1} more files)" if len(failures) > 1 else ""
        return f"copying {source} to {target}: {why}{more}"
    return f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")


class DataFormatError(RecflError):
    """A data file that does not match its declared format, with file and line."""

    def __init__(self, path: str | Path, message: str, line: int | None = None):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line
